"""The last step of update_progress_job: follow-up jobs reach the website's Sidekiq."""

from datetime import UTC, datetime

import dagster as dg

from ..sidekiq.resource import SidekiqResource
from ..steps.follow_up_delivery import MAX_WAIT, RepositoryOutboxStore
from ..teachcomputing.resource import TeachComputingDatabaseResource
from .constants import API_POOL, GROUP
from .failures import fails_in_one_line
from .metadata import NO_SIDEKIQ, with_night_summary
from .run_options import RunOptions


@dg.asset(
    group_name=GROUP,
    pool=API_POOL,
    kinds={"python", "redis"},
    deps=["achievement_progress"],
    check_specs=[
        dg.AssetCheckSpec(
            "outbox_drained",
            asset="follow_up_jobs",
            description="No follow-up job has waited in the outbox for more than a day.",
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
    oldest = result.oldest_waiting_age
    waiting = result.waiting
    materialized = dg.MaterializeResult(
        metadata={
            "delivered": result.delivered_total,
            "delivered_by_job_class": dg.MetadataValue.json(result.delivered),
            "recovered_from_an_interrupted_run": result.recovered,
            "waiting": result.waiting,
            "oldest_waiting_hours": round(oldest.total_seconds() / 3600, 2) if oldest else 0.0,
            "sidekiq_configured": sidekiq.configured,
            "dry_run": run_options.dry_run,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="outbox_drained",
                # Jobs waiting with no Sidekiq to take them will not leave tomorrow either.
                passed=(oldest is None or oldest <= MAX_WAIT)
                and (sidekiq.configured or not waiting),
                severity=dg.AssetCheckSeverity.WARN,
                description=None if sidekiq.configured or not waiting else NO_SIDEKIQ,
                metadata={"waiting": result.waiting},
            )
        ],
    )
    return with_night_summary(context, materialized)
