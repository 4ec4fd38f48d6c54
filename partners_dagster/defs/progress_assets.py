"""Step 2 — turn each linked teacher's latest enrolment into achievement progress."""

import dataclasses

import dagster as dg
import pandas as pd

from ..sidekiq.resource import SidekiqResource
from ..steps import asset_values
from ..steps.course_reports import CourseEnrolments
from ..steps.latest_enrolment import LatestEnrolmentSet
from ..steps.night_plan import NightPlan
from ..steps.progress_update import update_achievement_progress
from ..teachcomputing.resource import TeachComputingDatabaseResource
from .failures import fails_in_one_line
from .metadata import table
from .night_asset import night_asset
from .run_options import RunOptions, plan_metadata


@night_asset(kinds={"python", "pandas"}, deps=["membership_links"])
@fails_in_one_line
def latest_enrolments(
    teachcomputing_db: TeachComputingDatabaseResource,
    run_options: RunOptions,
    course_enrolments: CourseEnrolments,
) -> dg.MaterializeResult[LatestEnrolmentSet]:
    """For every linked teacher and every course Teach Computing knows, the enrolment that
    counts: the latest across all runs of the course and all the teacher's memberships
    (greatest activated_at, then higher ratio, then greater run UUID). A scoped run keeps
    only its users."""
    repository = teachcomputing_db.repository()
    scope = run_options.scope(repository)
    links = repository.linked_memberships()
    result = asset_values.latest_enrolments(
        repository, course_enrolments, links=links, users=scope.users
    )
    latest = result.latest
    return dg.MaterializeResult(
        value=result,
        metadata={
            "latest_enrolments": len(latest),
            "users": int(latest["user_id"].nunique()),
            "courses": int(latest["course_uuid"].nunique()),
            "linked_memberships": len(links),
            "enrolments_without_a_linked_user": result.unlinked_enrolments,
            "courses_skipped": len(result.skipped_courses),
            "skipped_courses": table(result.skipped_courses),
        },
    )


@night_asset(
    kinds={"python", "sql"},
    check_specs=[
        dg.AssetCheckSpec(
            "progress_never_decreases",
            asset="achievement_progress",
            description="No achievement's progress went down and no complete achievement changed in this run.",
        )
    ],
)
@fails_in_one_line
def achievement_progress(
    context: dg.AssetExecutionContext,
    teachcomputing_db: TeachComputingDatabaseResource,
    sidekiq: SidekiqResource,
    run_options: RunOptions,
    latest_enrolments: LatestEnrolmentSet,
) -> dg.MaterializeResult:
    """Applies each latest enrolment to the teacher's achievement for that course: progress
    (never down), state (enrolled, in progress, complete, dropped) as statesman transitions,
    and the follow-up jobs the website would queue, into the outbox. One transaction per
    course that has something to write; forgotten users and complete achievements are left
    alone. A dry run plans every course from one read and writes nothing."""
    repository = teachcomputing_db.repository()
    scope = run_options.scope(repository)
    plan = NightPlan()
    counts = update_achievement_progress(
        repository,
        latest_enrolments,
        dagster_run_id=context.run.run_id,
        globalid_app=sidekiq.globalid_app,
        dry_run=run_options.dry_run,
        plan=plan,
    )
    if run_options.dry_run:
        context.log.info(f"dry run, nothing written: {plan.summary()}")
    timed_out = pd.DataFrame(counts.courses_timed_out, columns=["course_uuid", "title", "error"])
    if not timed_out.empty:
        context.log.warning(
            f"{len(timed_out)} course(s) skipped on a database lock or statement timeout "
            f"(another session held their rows); the next run applies them: "
            f"{', '.join(timed_out['course_uuid'].astype(str))}"
        )
    return dg.MaterializeResult(
        metadata={
            **plan_metadata(plan, run_options, scope),
            "courses_applied": counts.courses_applied,
            "courses_skipped": counts.courses_skipped,
            "courses_skipped_on_lock_timeout": table(timed_out),
            "achievements_created": counts.achievements_created,
            "achievements_progressed": counts.achievements_progressed,
            "achievements_completed": counts.moved_to_complete,
            "achievements_dropped": counts.moved_to_dropped,
            "achievements_back_to_enrolled": counts.moved_to_enrolled,
            "achievements_in_progress": counts.moved_to_in_progress,
            "achievements_unchanged": counts.unchanged,
            "skipped_because_complete": counts.skipped_complete,
            "skipped_because_forgotten": counts.skipped_forgotten,
            "follow_up_jobs_queued": counts.follow_up_jobs,
            "skipped_courses": table(latest_enrolments.skipped_courses),
            # The whole typed object, for tools that read it back (ProgressCounts(**value)).
            "counts": dg.MetadataValue.json(dataclasses.asdict(counts)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="progress_never_decreases",
                passed=counts.never_decreased,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "transitions_from_complete": counts.transitions_from_complete,
                    "progress_decreases": counts.progress_decreases,
                    "complete_achievements_changed": counts.complete_changed,
                    "transitions_in_run": counts.transitions_in_run,
                },
            )
        ],
    )
