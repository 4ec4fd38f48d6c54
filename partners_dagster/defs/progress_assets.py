"""Step 2 — turn each linked teacher's latest enrolment into achievement progress."""

from collections import Counter
from functools import partial

import dagster as dg
import pandas as pd
from sqlalchemy.exc import SQLAlchemyError

from ..rules import ProgrammeEnrolment
from ..steps.course_progress import plan_course_progress
from ..steps.course_reports import CourseEnrolments
from ..steps.latest_enrolment import LatestEnrolmentSet, select_latest_enrolments
from ..teachcomputing.models import utcnow
from ..teachcomputing.resource import TeachComputingDatabaseResource
from .constants import GROUP
from .metadata import table


@dg.asset(group_name=GROUP, kinds={"python", "pandas"}, deps=["membership_links"])
def latest_enrolments(
    teachcomputing_db: TeachComputingDatabaseResource, course_enrolments: CourseEnrolments
) -> dg.Output[LatestEnrolmentSet]:
    """For every linked teacher and every course Teach Computing knows, the enrolment that
    counts: the latest across all runs of the course and all the teacher's memberships
    (greatest activated_at, then higher ratio, then greater run UUID)."""
    repository = teachcomputing_db.repository()
    links = repository.linked_memberships()
    result = select_latest_enrolments(course_enrolments, links, repository.catalogue().activities)
    latest = result.latest
    return dg.Output(
        result,
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


@dg.asset(
    group_name=GROUP,
    kinds={"python", "sql"},
    check_specs=[
        dg.AssetCheckSpec(
            "progress_never_decreases",
            asset="achievement_progress",
            description="No achievement's progress went down and no complete achievement changed in this run.",
        )
    ],
)
def achievement_progress(
    context: dg.AssetExecutionContext,
    teachcomputing_db: TeachComputingDatabaseResource,
    latest_enrolments: LatestEnrolmentSet,
):
    """Applies each latest enrolment to the teacher's achievement for that course: progress
    (never down), state (enrolled, in progress, complete, dropped), a transition row per move,
    and the follow-up jobs a completion queues. One transaction per course."""
    repository = teachcomputing_db.repository()
    catalogue = repository.catalogue()
    activities = catalogue.activities.set_index("activity_id")
    enrolments_by_user = _programme_enrolments(repository.current_programme_enrolments())
    now = utcnow()
    counts: Counter = Counter()
    applied = 0
    for activity_id, latest in latest_enrolments.latest.groupby("activity_id", sort=True):
        plan = partial(
            plan_course_progress,
            latest,
            credit=int(activities.at[activity_id, "credit"]),
            programme_slugs=catalogue.programme_slugs,
            dagster_run_id=context.run.run_id,
            now=now,
        )
        try:
            counts += repository.apply_course_progress(
                activity_id,
                latest,
                programme_ids=catalogue.programme_ids_by_activity.get(activity_id, []),
                programme_enrolments=enrolments_by_user,
                plan=plan,
                now=now,
            )
        except SQLAlchemyError as error:
            raise RuntimeError(
                f"database error on course {activities.at[activity_id, 'course_uuid']} "
                f"({activities.at[activity_id, 'title']!r}); that course was rolled back, "
                f"{applied} course(s) before it were applied: {error.__class__.__name__}: {error}"
            ) from error
        applied += 1
    audit = repository.run_audit(context.run.run_id)
    linked_users = int(repository.linked_memberships()["user_id"].nunique())
    yield dg.MaterializeResult(
        metadata={
            "courses_applied": applied,
            "courses_skipped": len(latest_enrolments.skipped_courses),
            "achievements_created": counts["created"],
            "achievements_progressed": counts["progressed"],
            "achievements_completed": counts["moved_to_complete"],
            "achievements_dropped": counts["moved_to_dropped"],
            "achievements_back_to_enrolled": counts["moved_to_enrolled"],
            "achievements_in_progress": counts["moved_to_in_progress"],
            "achievements_unchanged": counts["unchanged"],
            "skipped_because_complete": counts["skipped_complete"],
            "pending_jobs_queued": counts["pending_jobs"],
            "users_without_a_link": repository.user_count() - linked_users,
            "skipped_courses": table(latest_enrolments.skipped_courses),
        }
    )
    yield dg.AssetCheckResult(
        check_name="progress_never_decreases",
        passed=audit["transitions_from_complete"] == 0
        and counts["progress_decreases"] == 0
        and counts["complete_changed"] == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "transitions_from_complete": audit["transitions_from_complete"],
            "progress_decreases": counts["progress_decreases"],
            "complete_achievements_changed": counts["complete_changed"],
            "transitions_in_run": audit["transitions"],
        },
    )


def _programme_enrolments(frame: pd.DataFrame) -> dict[str, list[ProgrammeEnrolment]]:
    enrolments: dict[str, list[ProgrammeEnrolment]] = {}
    for user_id, programme_id, created_at in frame.itertuples(index=False):
        enrolments.setdefault(user_id, []).append(ProgrammeEnrolment(programme_id, created_at))
    return enrolments
