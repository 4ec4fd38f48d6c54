"""The last step of update_progress_job: follow-up jobs reach the website's Sidekiq."""

from datetime import UTC, datetime

import dagster as dg

from ..sidekiq.resource import SidekiqResource
from ..steps.follow_up_delivery import RepositoryOutboxStore, outbox_problems
from ..teachcomputing.resource import TeachComputingDatabaseResource
from .failures import fails_in_one_line
from .metadata import with_night_summary
from .night_asset import night_asset
from .run_options import RunOptions

# Set-aside rows named one by one in the log and metadata; the rest are counted.
SHOWN_ERRORS = 20


@night_asset(
    kinds={"python", "redis"},
    deps=["achievement_progress"],
    check_specs=[
        dg.AssetCheckSpec(
            "outbox_drained",
            asset="follow_up_jobs",
            description="No follow-up job has waited in the outbox for more than a day, "
            "none is set aside as undeliverable, and a Sidekiq process has registered in the "
            "Redis they are delivered to.",
        )
    ],
)
@fails_in_one_line
def follow_up_jobs(
    context: dg.AssetExecutionContext,
    teachcomputing_db: TeachComputingDatabaseResource,
    sidekiq: SidekiqResource,
    run_options: RunOptions,
) -> dg.MaterializeResult:
    """Delivers every undelivered outbox row (earlier nights' included) to the website's
    Sidekiq, exactly as Rails 6.1's ActiveJob Sidekiq adapter enqueues it, each once. Without
    TEACHCOMPUTING_SIDEKIQ_REDIS_URL the jobs wait in the outbox and are counted. A dry run
    delivers nothing; a scoped run delivers only the rows it queued."""
    repository = teachcomputing_db.repository()
    scope = run_options.scope(repository)
    store = RepositoryOutboxStore(
        repository, only_run_id=context.run.run_id if scope.scoped else None
    )
    # A dry run pushes nothing: delivery with no Redis only counts what waits.
    result = (
        SidekiqResource(redis_url=None, globalid_app=sidekiq.globalid_app)
        if run_options.dry_run
        else sidekiq
    ).deliver(store, now=datetime.now(UTC))
    if not sidekiq.configured and result.waiting:
        context.log.warning(
            f"{result.waiting} follow-up job(s) wait in the outbox: "
            "TEACHCOMPUTING_SIDEKIQ_REDIS_URL is not set"
        )
    for warning in result.warnings:
        context.log.warning(warning)
    for row_id, error in list(result.set_aside.items())[:SHOWN_ERRORS]:
        context.log.warning(f"outbox row {row_id} set aside, not delivered: {error}")
    if len(result.set_aside) > SHOWN_ERRORS:
        context.log.warning(f"... and {len(result.set_aside) - SHOWN_ERRORS} more set aside")
    if result.left_to_another_run:
        context.log.info(
            f"{result.left_to_another_run} outbox row(s) were claimed by another delivery "
            "running at the same time; left to it"
        )
    problems = outbox_problems(result, sidekiq_configured=sidekiq.configured)
    oldest = result.oldest_waiting_age
    materialized = dg.MaterializeResult(
        metadata={
            "delivered": result.delivered_total,
            "delivered_by_job_class": dg.MetadataValue.json(result.delivered),
            "recovered_from_an_interrupted_run": result.recovered,
            "waiting": result.waiting,
            "oldest_waiting_hours": round(oldest.total_seconds() / 3600, 2) if oldest else 0.0,
            "sidekiq_configured": sidekiq.configured,
            "dry_run": run_options.dry_run,
            "sidekiq_processes": -1
            if result.sidekiq_processes is None
            else result.sidekiq_processes,
            "set_aside": len(result.set_aside),
            "set_aside_total": result.set_aside_total,
            "set_aside_errors": dg.MetadataValue.json(
                {str(k): v for k, v in list(result.set_aside.items())[:SHOWN_ERRORS]}
            ),
            "left_to_another_run": result.left_to_another_run,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="outbox_drained",
                passed=not problems,
                severity=dg.AssetCheckSeverity.WARN,
                description="; ".join(problems) or None,
                metadata={
                    "waiting": result.waiting,
                    "set_aside": result.set_aside_total,
                    "problems": dg.MetadataValue.json(problems),
                },
            )
        ],
    )
    return with_night_summary(context, materialized)
