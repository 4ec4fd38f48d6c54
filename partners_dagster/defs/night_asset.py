"""The decorator of every nightly asset: its group, and the pool that lets one run at a time
call the API however it was launched (a schedule, the Launchpad, an asset page)."""

import functools

import dagster as dg

from .constants import API_POOL, GROUP

night_asset = functools.partial(dg.asset, group_name=GROUP, pool=API_POOL)
