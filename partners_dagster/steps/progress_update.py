"""Step 2's unit of work: apply the latest enrolments to the achievements, course by course,
one transaction each, and say what changed. No Dagster: a test calls it with a repository
on a temporary database."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import uuid4

import pandas as pd

from ..rules import (
    CS_ACCELERATOR,
    Programme,
    ProgrammeEnrolment,
    programme_for_new_achievement,
)
from .course_progress import CourseFacts, plan_course_progress, plan_violations
from .latest_enrolment import LatestEnrolmentSet
from .night_plan import NightPlan

if TYPE_CHECKING:  # SQLAlchemy loads when a run uses the repository
    from ..teachcomputing.repository import TeachComputingRepository


class CourseWriteError(RuntimeError):
    """A database error on one course: that course was rolled back, earlier ones stand."""


@dataclass(frozen=True)
class ProgressCounts:
    """What one progress update did, for run metadata, the demo and the benchmark."""

    courses_applied: int
    courses_skipped: int
    achievements_created: int
    achievements_progressed: int
    moved_to_complete: int
    moved_to_dropped: int
    moved_to_enrolled: int
    moved_to_in_progress: int
    unchanged: int
    skipped_complete: int
    skipped_forgotten: int
    follow_up_jobs: int
    progress_decreases: int
    complete_changed: int
    transitions_in_run: int
    transitions_from_complete: int

    @property
    def never_decreased(self) -> bool:
        return (
            self.progress_decreases == 0
            and self.complete_changed == 0
            and self.transitions_from_complete == 0
        )


def update_achievement_progress(
    repository: TeachComputingRepository,
    latest: LatestEnrolmentSet,
    *,
    dagster_run_id: str,
    globalid_app: str,
    now: datetime | None = None,
    dry_run: bool = False,
    plan: NightPlan | None = None,
    on_course: Callable[[int, int], None] | None = None,
) -> ProgressCounts:
    """For every known course with latest enrolments: create missing achievements, then, on
    what is stored at that moment, move progress and state and queue the follow-up jobs,
    all in that course's transaction. Forgotten users are left alone.

    ``dry_run``: each course is planned in a read-only transaction that locks nothing, and
    nothing is written. ``plan`` receives every change made (or that would be made), one a
    line; ``on_course(done, total)`` is told after each course."""
    from sqlalchemy.exc import SQLAlchemyError

    now = now or datetime.now(UTC)
    catalogue = repository.catalogue()
    activities = catalogue.activities.set_index("activity_id")
    programmes = {
        row.id: Programme(row.id, row.slug, row.type if isinstance(row.type, str) else None)
        for row in catalogue.programmes.itertuples(index=False)
    }
    enrolments = repository.programme_enrolments()
    enrolments_by_user = _programme_enrolments(enrolments)
    csa_ids = {p.id for p in programmes.values() if p.slug == CS_ACCELERATOR}
    users_with_csa = set(enrolments.loc[enrolments["programme_id"].isin(csa_ids), "user_id"])
    forgotten = repository.forgotten_user_ids()
    counts: Counter = Counter()
    applied = 0
    plan = plan if plan is not None else NightPlan()
    courses = latest.latest.groupby("activity_id", sort=True)
    for done, (activity_id, rows) in enumerate(courses, start=1):
        kept = rows[~rows["user_id"].isin(forgotten)]
        counts["skipped_forgotten"] += len(rows) - len(kept)
        if not kept.empty:
            activity = activities.loc[activity_id]
            facts = CourseFacts(
                activity_id=activity_id,
                credit=None if pd.isna(activity["credit"]) else float(activity["credit"]),
                category=activity["category"] if isinstance(activity["category"], str) else None,
                programmes=programmes,
                users_with_csa_enrolment=users_with_csa,
                globalid_app=globalid_app,
                dagster_run_id=dagster_run_id,
                now=now,
            )
            programme_ids = catalogue.programme_ids_by_activity.get(activity_id, [])
            try:
                counts += _apply_course(
                    repository, kept, facts, programme_ids, enrolments_by_user, dry_run, plan
                )
            except SQLAlchemyError as error:
                raise CourseWriteError(
                    f"database error on course {activity['course_uuid']} ({activity['title']!r}); "
                    f"that course was rolled back, {applied} course(s) before it were applied: "
                    f"{error.__class__.__name__}: {str(error).splitlines()[0][:300]}"
                ) from error
            applied += 1
        if on_course is not None:
            on_course(done, courses.ngroups)
    audit = repository.run_audit(dagster_run_id)
    return ProgressCounts(
        courses_applied=applied,
        courses_skipped=len(latest.skipped_courses),
        achievements_created=counts["created"],
        achievements_progressed=counts["progressed"],
        moved_to_complete=counts["moved_to_complete"],
        moved_to_dropped=counts["moved_to_dropped"],
        moved_to_enrolled=counts["moved_to_enrolled"],
        moved_to_in_progress=counts["moved_to_in_progress"],
        unchanged=counts["unchanged"],
        skipped_complete=counts["skipped_complete"],
        skipped_forgotten=counts["skipped_forgotten"],
        follow_up_jobs=counts["follow_up_jobs"],
        progress_decreases=counts["progress_decreases"],
        complete_changed=counts["complete_changed"],
        transitions_in_run=audit["transitions"],
        transitions_from_complete=audit["transitions_from_complete"],
    )


def _apply_course(
    repository: TeachComputingRepository,
    latest: pd.DataFrame,
    facts: CourseFacts,
    programme_ids: list[str],
    enrolments_by_user: dict[str, list[ProgrammeEnrolment]],
    dry_run: bool,
    night_plan: NightPlan,
) -> Counter:
    counts: Counter = Counter()
    with repository.course_transaction(facts.activity_id, dry_run=dry_run) as course:
        stored = course.achievements()
        missing = sorted(set(latest["user_id"]) - set(stored["user_id"]))
        created = course.create_achievements(
            [
                {
                    "id": str(uuid4()),
                    "user_id": user_id,
                    "programme_id": programme_for_new_achievement(
                        programme_ids, enrolments_by_user.get(user_id, ())
                    ),
                }
                for user_id in missing
            ]
        )
        if len(created) < len(missing):
            # Someone else created some meanwhile (PostgreSQL): read them as they are.
            stored = course.achievements()
        elif not created.empty:
            stored = created if stored.empty else pd.concat([stored, created], ignore_index=True)
        stored = stored[stored["user_id"].isin(latest["user_id"])]
        plan = plan_course_progress(latest, stored, facts, created["id"])
        counts.update(plan_violations(stored, plan))
        jobs = plan.job_rows(facts.dagster_run_id, facts.now)
        new_jobs = course.write(plan.updates, plan.transitions, jobs)
        counts["follow_up_jobs"] += len(new_jobs)
    night_plan.course(
        facts.activity_id,
        stored=stored,
        created=created,
        updates=plan.updates,
        transitions=plan.transitions,
        jobs=[job for job in jobs if job["dedup_key"] in new_jobs],
    )
    counts["created"] += len(created)
    counts.update(plan.counts)
    return counts


def _programme_enrolments(frame: pd.DataFrame) -> dict[str, list[ProgrammeEnrolment]]:
    enrolments: dict[str, list[ProgrammeEnrolment]] = {}
    for user_id, programme_id, created_at, state in frame.itertuples(index=False):
        enrolments.setdefault(user_id, []).append(
            ProgrammeEnrolment(programme_id, created_at, state)
        )
    return enrolments
