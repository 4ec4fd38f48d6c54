"""Run metadata an operator reads in the Dagster UI: counts, request tallies, short tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

if TYPE_CHECKING:
    from ..partners_api.client import PartnersApiClient


def table(frame: pd.DataFrame, limit: int = 20) -> dg.MetadataValue:
    """A markdown preview of at most ``limit`` rows (the UI is not a data browser)."""
    if frame.empty:
        return dg.MetadataValue.md("_none_")
    shown = frame.head(limit).astype(str).map(lambda v: v.replace("|", "\\|").replace("\n", " "))
    lines = [
        "| " + " | ".join(shown.columns) + " |",
        "|" + "---|" * len(shown.columns),
        *("| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)),
    ]
    if len(frame) > limit:
        lines.append(f"\n_…and {len(frame) - limit} more_")
    return dg.MetadataValue.md("\n".join(lines))


@contextmanager
def request_tally(client: PartnersApiClient) -> Iterator[dict]:
    """Collects, into the yielded dict, the API requests made inside the block."""
    before = client.stats.snapshot()
    tally: dict = {}
    yield tally
    after = client.stats.snapshot()
    per_endpoint = {
        endpoint: {
            field: after[endpoint][field] - before[endpoint][field] for field in after[endpoint]
        }
        for endpoint in after
    }
    tally["api_network_requests"] = sum(c["network"] for c in per_endpoint.values())
    tally["api_cache_hits"] = sum(c["cache_hits"] for c in per_endpoint.values())
    tally["api_retries"] = sum(c["retries"] for c in per_endpoint.values())
    tally["api_requests_by_endpoint"] = dg.MetadataValue.json(
        {e: c for e, c in per_endpoint.items() if any(c.values())}
    )
