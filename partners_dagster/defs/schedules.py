"""The nightly schedules: memberships at 02:00, then progress once memberships is done.

Times are Europe/London wall-clock times; a "night" is the local date of the tick.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from .constants import DEGRADED_TAG, MEMBERSHIPS_RUN_TAG, NIGHT_TAG
from .jobs import update_memberships_job, update_progress_job

TIMEZONE = "Europe/London"
WINDOW_OPENS = time(2, 30)
LAST_TICK = time(5, 45)
PROGRESS_CRONS = ["30,45 2 * * *", "*/15 3-5 * * *"]

IN_PROGRESS = frozenset(
    {
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    }
)


def night_of(scheduled: datetime) -> str:
    return scheduled.astimezone(ZoneInfo(TIMEZONE)).date().isoformat()


@dataclass(frozen=True)
class StepOneRun:
    run_id: str
    status: dg.DagsterRunStatus


def progress_run_decision(
    scheduled: datetime, step_one_runs: Sequence[StepOneRun], progress_run_id: str | None
) -> dg.RunRequest | dg.SkipReason:
    """What ``update_progress_schedule`` does at one tick.

    ``step_one_runs``: tonight's ``update_memberships_job`` runs, newest first;
    ``progress_run_id``: tonight's progress run, if one was launched already.
    """
    local = scheduled.astimezone(ZoneInfo(TIMEZONE))
    night = local.date().isoformat()
    if local.time() < WINDOW_OPENS:
        return dg.SkipReason(f"{local:%H:%M} is before the 02:30 window opens")
    if progress_run_id is not None:
        return dg.SkipReason(
            f"tonight's ({night}) progress run was already launched: {progress_run_id}"
        )
    last_tick = local.time() >= LAST_TICK
    tags = {NIGHT_TAG: night}
    # The newest memberships run decides: an earlier run that succeeded (a manual run after
    # midnight, say) says nothing about the links the newest one is still writing.
    newest = step_one_runs[0] if step_one_runs else None
    if newest is not None and newest.status == dg.DagsterRunStatus.SUCCESS:
        return dg.RunRequest(run_key=night, tags={**tags, MEMBERSHIPS_RUN_TAG: newest.run_id})
    if newest is not None and newest.status in IN_PROGRESS:
        if not last_tick:
            return dg.SkipReason(
                f"waiting for tonight's memberships run {newest.run_id} ({newest.status.value.lower()})"
            )
        # Last chance tonight: launch, and the run queue's API tag limit holds it until
        # the memberships run has finished.
        return dg.RunRequest(
            run_key=night,
            tags={
                **tags,
                MEMBERSHIPS_RUN_TAG: newest.run_id,
                DEGRADED_TAG: f"memberships run {newest.run_id} still {newest.status.value.lower()} at {LAST_TICK:%H:%M}",
            },
        )
    problem = (
        f"memberships run {newest.run_id} {newest.status.value.lower()}"
        if newest is not None
        else "no memberships run tonight"
    )
    if not last_tick:
        return dg.SkipReason(
            f"{problem}; progress will run on the previous links at {LAST_TICK:%H:%M}"
        )
    degraded = {DEGRADED_TAG: f"{problem}: progress ran on the previous night's links"}
    if newest is not None:
        degraded[MEMBERSHIPS_RUN_TAG] = newest.run_id
    return dg.RunRequest(run_key=night, tags={**tags, **degraded})


def _tonights_runs(
    instance: dg.DagsterInstance, job_name: str, scheduled: datetime
) -> list[dg.DagsterRun]:
    """Runs of ``job_name`` for the tick's night: tagged with it by a schedule, or started since
    local midnight (a manual run during the night counts)."""
    local = scheduled.astimezone(ZoneInfo(TIMEZONE))
    midnight = datetime.combine(local.date(), time(0), tzinfo=ZoneInfo(TIMEZONE))
    tagged = instance.get_runs(
        dg.RunsFilter(job_name=job_name, tags={NIGHT_TAG: night_of(scheduled)}), limit=50
    )
    recent = instance.get_runs(
        dg.RunsFilter(
            job_name=job_name, created_after=midnight, created_before=midnight + timedelta(days=1)
        ),
        limit=50,
    )
    runs = {run.run_id: run for run in [*tagged, *recent]}
    records = (
        {
            r.dagster_run.run_id: r
            for r in instance.get_run_records(dg.RunsFilter(run_ids=list(runs)))
        }
        if runs
        else {}
    )
    return sorted(runs.values(), key=lambda run: records[run.run_id].create_timestamp, reverse=True)


@dg.schedule(
    name="update_memberships_schedule",
    cron_schedule="0 2 * * *",
    execution_timezone=TIMEZONE,
    job=update_memberships_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Step 1 every night at 02:00 Europe/London.",
)
def update_memberships_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    night = night_of(context.scheduled_execution_time)
    return dg.RunRequest(run_key=night, tags={NIGHT_TAG: night})


@dg.schedule(
    name="update_progress_schedule",
    # Two crons, so the UI shows the real window: 02:30 and 02:45, then every 15 minutes from
    # 03:00 to 05:45 (DESIGN's `*/15 2-5 * * *` less the ticks before 02:30, which skip).
    cron_schedule=PROGRESS_CRONS,
    execution_timezone=TIMEZONE,
    job=update_progress_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Step 2, once per night: as soon as tonight's memberships run has succeeded "
        "(ticks every 15 minutes from 02:30 to 05:45 Europe/London); at 05:45 it runs anyway, "
        "tagged partners_dagster/degraded, if memberships failed or never ran."
    ),
)
def update_progress_schedule(
    context: dg.ScheduleEvaluationContext,
) -> dg.RunRequest | dg.SkipReason:
    scheduled = context.scheduled_execution_time
    step_one = [
        StepOneRun(run.run_id, run.status)
        for run in _tonights_runs(context.instance, update_memberships_job.name, scheduled)
    ]
    progress = context.instance.get_runs(
        dg.RunsFilter(job_name=update_progress_job.name, tags={NIGHT_TAG: night_of(scheduled)}),
        limit=1,
    )
    return progress_run_decision(scheduled, step_one, progress[0].run_id if progress else None)
