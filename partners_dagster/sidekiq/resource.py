"""The website's Sidekiq Redis as a Dagster resource (placeholder until delivery lands)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

DEFAULT_GLOBALID_APP = "teach-computing"


class SidekiqResource(ConfigurableResource):
    redis_url: str | None = Field(default=None)
    globalid_app: str = Field(default=DEFAULT_GLOBALID_APP)
