"""Step 2's logic, pure (no Dagster, no I/O): each linked user's latest enrolment per
course, and the plan of one course's achievement updates.

The repository loads the stored achievements of a course inside a locked
transaction, calls ``plan_course_progress``, and writes the plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from .courses import CourseEnrolments
from .rules import (
    FollowUpJob,
    State,
    follow_up_jobs,
    latest_enrolments_frame,
    next_achievement,
    progress_from_ratios,
    transition_metadata,
)

LATEST_COLUMNS = [
    "user_id",
    "course_uuid",
    "activity_id",
    "run_uuid",
    "membership_uuid",
    "activated_at",
    "deactivated_at",
    "steps_completed_ratio",
    "progress",
]


@dataclass(frozen=True)
class LatestEnrolments:
    latest: pd.DataFrame  # LATEST_COLUMNS: one row per (linked user, known course)
    skipped_courses: pd.DataFrame  # course_uuid, reason: not touched this night
    unlinked_enrolments: int  # enrolments whose membership no user is linked to


def latest_enrolments(
    course_enrolments: CourseEnrolments, links: pd.DataFrame, activities: pd.DataFrame
) -> LatestEnrolments:
    """For every linked user and known course, the latest enrolment across all runs of the
    course and all the user's memberships. Courses with a run that could not be read whole
    are left out (an older enrolment must not drop a learner)."""
    enrolments = course_enrolments.enrolments
    linked = enrolments.merge(
        links[["membership_uuid", "user_id"]], on="membership_uuid", how="inner"
    )
    skipped = _skipped_courses(course_enrolments)
    linked = linked[~linked["course_uuid"].isin(skipped["course_uuid"])]
    latest = latest_enrolments_frame(linked)
    latest["progress"] = progress_from_ratios(latest["steps_completed_ratio"])
    latest = latest.merge(activities[["activity_id", "course_uuid"]], on="course_uuid", how="inner")
    return LatestEnrolments(
        latest=latest[LATEST_COLUMNS],
        skipped_courses=skipped,
        unlinked_enrolments=len(enrolments)
        - int(enrolments["membership_uuid"].isin(links["membership_uuid"]).sum()),
    )


def _skipped_courses(course_enrolments: CourseEnrolments) -> pd.DataFrame:
    reasons: dict[str, list[str]] = {}
    for course_uuid, runs in course_enrolments.failed_runs.groupby("course_uuid")["run_uuid"]:
        reasons.setdefault(course_uuid, []).append(
            f"{len(runs)} run(s) could not be fetched: {', '.join(sorted(runs))}"
        )
    for course_uuid, rows in course_enrolments.rejections.groupby("course_uuid"):
        reasons.setdefault(course_uuid, []).append(f"{len(rows)} malformed enrolment record(s)")
    return pd.DataFrame(
        [(course, "; ".join(text)) for course, text in sorted(reasons.items())],
        columns=["course_uuid", "reason"],
    )


@dataclass
class CoursePlan:
    updates: list[dict[str, Any]] = field(
        default_factory=list
    )  # id, progress, current_state, updated_at
    transitions: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[FollowUpJob] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def plan_course_progress(
    latest: pd.DataFrame,
    achievements: pd.DataFrame,
    last_sort_keys: Mapping[str, int],
    *,
    credit: int,
    programme_slugs: Mapping[str, str],
    dagster_run_id: str,
    now: datetime,
) -> CoursePlan:
    """``latest``: one row per user (user_id, run_uuid, membership_uuid, deactivated_at,
    progress). ``achievements``: the stored rows of this course for those users (id,
    user_id, progress, current_state, programme_id); every user has one by now."""
    plan = CoursePlan()
    rows = latest.merge(achievements, on="user_id", how="inner", suffixes=("_new", ""))
    for row in rows.itertuples(index=False):
        if row.current_state == State.COMPLETE:  # never changed again
            plan.counts["skipped_complete"] += 1
            continue
        deactivated_at = None if pd.isna(row.deactivated_at) else row.deactivated_at
        outcome = next_achievement(
            row.progress, row.current_state, row.progress_new, deactivated_at is not None
        )
        if outcome.progress == row.progress and not outcome.moved:
            plan.counts["unchanged"] += 1
            continue
        if outcome.progress > row.progress:
            plan.counts["progressed"] += 1
        plan.updates.append(
            {
                "id": row.id,
                "progress": outcome.progress,
                "current_state": str(outcome.state),
                "updated_at": now,
            }
        )
        if not outcome.moved:
            continue
        plan.counts[f"moved_to_{outcome.state}"] += 1
        plan.transitions.append(
            {
                "achievement_id": row.id,
                "from_state": str(outcome.moved_from),
                "to_state": str(outcome.state),
                "sort_key": last_sort_keys.get(row.id, 0) + 10,
                "most_recent": True,
                "metadata": transition_metadata(
                    outcome.state,
                    dagster_run_id=dagster_run_id,
                    run_uuid=row.run_uuid,
                    membership_uuid=row.membership_uuid,
                    credit=credit,
                    left_at=deactivated_at,
                ),
                "created_at": now,
            }
        )
        if outcome.state is State.COMPLETE:
            slug = (
                programme_slugs.get(row.programme_id) if isinstance(row.programme_id, str) else None
            )
            plan.jobs.extend(follow_up_jobs(slug, row.user_id, row.id, now))
    return plan
