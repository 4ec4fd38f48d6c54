"""Run metadata an operator reads in the Dagster UI: counts, request tallies, short tables."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from .constants import MEMBERSHIPS_JOB, PROGRESS_JOB

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


def content_version(*frames: pd.DataFrame) -> dg.DataVersion:
    """A data version from what the frames hold, whatever the order of their rows.

    Step 2 re-materializes the API assets; with Dagster's default (a new version per
    materialization) every normal night left step 1's downstream assets "Unsynced". With the
    content as the version, the same answers make the same version and nothing looks stale;
    an answer that changed does, as it should."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(repr((list(frame.columns), len(frame))).encode())
        try:
            rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        except TypeError:  # unhashable cells (lists, dicts): hash their text instead
            rows = pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy()
        # A sum (modulo 2**64) of the rows' hashes: the same rows in another order agree.
        digest.update(int(rows.sum(dtype="uint64")).to_bytes(8, "little"))
    return dg.DataVersion(digest.hexdigest()[:24])


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


# --- Network against cache, for the whole run ------------------------------------------------

# The assets whose run reads the API, directly or by rebuilding an upstream value through the
# response cache (a single asset materialized from the UI); follow_up_jobs never does.
API_READING_ASSETS = (
    "course_runs",
    "course_enrolments",
    "organisation_memberships",
    "membership_links",
    "latest_enrolments",
    "achievement_progress",
)
NETWORK_CHECK = "answers_from_the_network"


def run_request_counts(*clients: PartnersApiClient | None) -> dict[str, int]:
    """The API answers of this run so far. A client lives as long as its run (every job, and
    the UI's asset runs, execute in one process), so its counters are the run's; the IO
    manager has a client of its own for the upstream values it rebuilds."""
    unique = {id(c): c for c in clients if c is not None}.values()
    return {
        f"run_api_{name}": sum(c.stats.total(field) for c in unique)
        for name, field in (
            ("network_requests", "network"),
            ("cache_hits", "cache_hits"),
            ("retries", "retries"),
        )
    }


def network_check_outcome(
    counts: dict[str, int], *, expected_from_cache_by: str | None
) -> tuple[bool, str]:
    """Whether a run's API answers pass the check, and the sentence that says why.

    A run that made no network request cannot tell whether the API is up: it passes only
    when its answers are known to come from an earlier run of the same night that asked the
    API (step 2 after step 1, the normal night)."""
    network, cache = counts["run_api_network_requests"], counts["run_api_cache_hits"]
    if network:
        return True, f"{network} answer(s) from the network, {cache} from the response cache."
    if expected_from_cache_by is not None:
        return True, (
            f"Every answer ({cache}) came from the response cache, filled by {expected_from_cache_by} "
            "as on every normal night."
        )
    return False, (
        f"This run made no network request: all {cache} answer(s) came from the response cache "
        "(up to FL_PARTNERS_CACHE_EXPIRY_SECONDS old), so it cannot tell whether the Partners API "
        "is up: check the API's status before trusting it."
    )


def _cache_filled_by(context: dg.AssetCheckExecutionContext) -> str | None:
    """The earlier run whose network answers this run is expected to reuse: for a progress
    run, the newest memberships run, when it succeeded and asked the API."""
    if context.job_def.name != PROGRESS_JOB:
        return None
    records = context.instance.get_run_records(
        dg.RunsFilter(job_name=MEMBERSHIPS_JOB), limit=1, order_by="create_timestamp"
    )
    if not records or records[0].dagster_run.status != dg.DagsterRunStatus.SUCCESS:
        return None
    run_id = records[0].dagster_run.run_id
    events = context.instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=100
    ).records
    network = 0
    for record in events:
        materialization = record.event_log_entry.asset_materialization
        value = materialization.metadata.get("api_network_requests") if materialization else None
        network += int(value.value) if value is not None else 0
    return f"memberships run {run_id}" if network else None


def build_network_check() -> dg.AssetChecksDefinition:
    """A warning when a run made no network request (every answer from the cache), on each
    API-reading asset of the run, so that one materialized alone from the UI says it too."""
    specs = [
        dg.AssetCheckSpec(
            NETWORK_CHECK,
            asset=asset,
            description="This run asked the Partners API over the network, or reused tonight's "
            "answers as step 2 does; a warning when every answer came from the cache.",
        )
        for asset in API_READING_ASSETS
    ]

    @dg.multi_asset_check(
        specs=specs,
        can_subset=True,
        name="api_answers_from_the_network",
        required_resource_keys={"partners_api", "io_manager"},
    )
    def api_answers_from_the_network(context):  # an AssetCheckExecutionContext
        rebuilding = getattr(context.resources.io_manager, "partners_api", None)
        counts = run_request_counts(
            context.resources.partners_api.client,
            # Only a client the IO manager has already made: asking for one would open one.
            getattr(rebuilding, "_client", None),
        )
        passed, description = network_check_outcome(
            counts, expected_from_cache_by=_cache_filled_by(context)
        )
        for key in sorted(context.selected_asset_check_keys, key=str):
            yield dg.AssetCheckResult(
                asset_key=key.asset_key,
                check_name=key.name,
                passed=passed,
                severity=dg.AssetCheckSeverity.WARN,
                description=description,
                metadata=counts,
            )

    return api_answers_from_the_network


# --- The night in one entry ------------------------------------------------------------------


def _run_metadata(context: dg.AssetExecutionContext) -> dict[str, dict]:
    """Each asset materialized so far in this run: its metadata, as plain values."""
    records = context.instance.get_records_for_run(
        context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=100
    ).records
    found: dict[str, dict] = {}
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None:
            found[materialization.asset_key.to_user_string()] = {
                key: value.value for key, value in materialization.metadata.items()
            }
    return found


def night_summary(assets: dict[str, dict], *, job: str, run_id: str) -> str:
    """What the run did, in one markdown table: what `make demo` prints, from the
    materializations' own metadata (``assets``: asset name -> metadata values)."""

    def value(asset: str, key: str) -> int:
        return int(assets.get(asset, {}).get(key, 0) or 0)

    rows: list[tuple[str, str]] = []
    if "membership_links" in assets:
        rows.append(
            (
                "memberships linked",
                f"{value('membership_links', 'memberships_linked')} "
                f"(by id {value('membership_links', 'linked_by_id')}, "
                f"by email {value('membership_links', 'linked_by_email')})",
            )
        )
        rows.append(
            (
                "unmatched",
                f"no such user {value('membership_links', 'unmatched_no_such_user')} · "
                f"ambiguous {value('membership_links', 'unmatched_ambiguous')} · "
                f"membership not found {value('membership_links', 'unmatched_membership_not_found')}",
            )
        )
    if "achievement_progress" in assets:
        rows.append(
            (
                "achievements",
                f"created {value('achievement_progress', 'achievements_created')} · "
                f"progressed {value('achievement_progress', 'achievements_progressed')} · "
                f"completed {value('achievement_progress', 'achievements_completed')} · "
                f"dropped {value('achievement_progress', 'achievements_dropped')} · "
                f"courses skipped {value('achievement_progress', 'courses_skipped')}",
            )
        )
    if "follow_up_jobs" in assets:
        waiting = value("follow_up_jobs", "waiting")
        configured = assets["follow_up_jobs"].get("sidekiq_configured", True)
        rows.append(
            (
                "follow-up jobs",
                f"queued {value('achievement_progress', 'follow_up_jobs_queued')} · "
                f"delivered {value('follow_up_jobs', 'delivered')} · waiting {waiting}"
                + ("" if configured or not waiting else f" (**{NO_SIDEKIQ}**)"),
            )
        )
    network = sum(value(a, "api_network_requests") for a in assets)
    cache = sum(value(a, "api_cache_hits") for a in assets)
    retries = sum(value(a, "api_retries") for a in assets)
    rows.append(("Partners API answers", f"network {network} · cache {cache} · retries {retries}"))
    lines = [f"**{job}**, run `{run_id[:8]}`", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {text} |" for name, text in rows]
    return "\n".join(lines)


def with_night_summary(
    context: dg.AssetExecutionContext, materialized: dg.MaterializeResult
) -> dg.MaterializeResult:
    """``materialized`` with ``night_summary`` added to its metadata: the last asset of each
    job carries it, so that one entry tells on-call what the night did."""
    metadata = dict(materialized.metadata or {})
    own = {k: v.value if isinstance(v, dg.MetadataValue) else v for k, v in metadata.items()}
    assets = {**_run_metadata(context), context.asset_key.to_user_string(): own}
    text = night_summary(assets, job=context.job_def.name, run_id=context.run.run_id)
    return dg.MaterializeResult(
        asset_key=materialized.asset_key,
        metadata={**metadata, "night_summary": dg.MetadataValue.md(text)},
        check_results=materialized.check_results,
        data_version=materialized.data_version,
        tags=materialized.tags,
        value=materialized.value,
    )


NO_SIDEKIQ = (
    "Follow-up jobs wait and TEACHCOMPUTING_SIDEKIQ_REDIS_URL is not set: nothing delivers them."
)
