"""Step 2's first half, pure (no Dagster, no I/O): each linked user's latest enrolment per
known course."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import pandas as pd

from ..rules import (
    pick_latest_enrolment_rows,
    progress_from_ratios,
)
from .course_reports import CourseEnrolments

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
class LatestEnrolmentSet:
    latest: pd.DataFrame  # LATEST_COLUMNS: one row per (linked user, known course)
    skipped_courses: pd.DataFrame  # course_uuid, reason: not touched this night
    unlinked_enrolments: int  # enrolments whose membership no user is linked to


def select_latest_enrolments(
    course_enrolments: CourseEnrolments,
    links: pd.DataFrame,
    activities: pd.DataFrame,
    *,
    users: Collection[str] | None = None,
) -> LatestEnrolmentSet:
    """For every linked user and known course, the latest enrolment across all runs of the
    course and all the user's memberships. Courses with a run that could not be read whole
    are left out (an older enrolment must not drop a learner). ``users``: only these (a
    scoped run); None: everyone."""
    enrolments = course_enrolments.enrolments
    if users is not None:
        links = links[links["user_id"].isin(set(users))]
    linked = enrolments.merge(
        links[["membership_uuid", "user_id"]], on="membership_uuid", how="inner"
    )
    skipped = _skipped_courses(course_enrolments)
    linked = linked[~linked["course_uuid"].isin(skipped["course_uuid"])]
    latest = pick_latest_enrolment_rows(linked)
    latest["progress"] = progress_from_ratios(latest["steps_completed_ratio"])
    latest = latest.merge(activities[["activity_id", "course_uuid"]], on="course_uuid", how="inner")
    return LatestEnrolmentSet(
        latest=latest[LATEST_COLUMNS],
        skipped_courses=skipped,
        unlinked_enrolments=len(enrolments)
        - int(enrolments["membership_uuid"].isin(links["membership_uuid"]).sum()),
    )


def _skipped_courses(course_enrolments: CourseEnrolments) -> pd.DataFrame:
    reasons: dict[str, list[str]] = {}
    shrunk = course_enrolments.shrunk_reports
    unread = course_enrolments.failed_runs
    unread = unread[~unread["run_uuid"].isin(set(shrunk["run_uuid"]))]
    for course_uuid, runs in unread.groupby("course_uuid")["run_uuid"]:
        reasons.setdefault(course_uuid, []).append(
            f"{len(runs)} run(s) could not be fetched: {', '.join(sorted(runs))}"
        )
    for course_uuid, rows in shrunk.groupby("course_uuid"):
        reasons.setdefault(course_uuid, []).append(
            "report shrank: "
            + ", ".join(
                f"{run} from {before} to {after}"
                for run, before, after in zip(
                    rows["run_uuid"], rows["remembered"], rows["enrolments"], strict=True
                )
            )
        )
    for course_uuid, rows in course_enrolments.rejections.groupby("course_uuid"):
        reasons.setdefault(course_uuid, []).append(f"{len(rows)} malformed enrolment record(s)")
    return pd.DataFrame(
        [(course, "; ".join(text)) for course, text in sorted(reasons.items())],
        columns=["course_uuid", "reason"],
    )
