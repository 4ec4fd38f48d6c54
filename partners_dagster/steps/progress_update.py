"""Step 2's unit of work: apply the latest enrolments to the achievements, course by course,
one transaction each, and say what changed. No Dagster: a test calls it with a repository
on a temporary database."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import uuid4

import pandas as pd

from ..rules import ProgrammeEnrolment, programme_for_new_achievement
from ..sidekiq.follow_up_jobs import CS_ACCELERATOR, Programme
from .course_progress import (
    CourseFacts,
    CoursePlan,
    plan_course_progress,
    plan_violations,
    sweep_courses,
)
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
    # Courses rolled back on a lock or statement timeout (course_uuid, title, error); the
    # next night applies them.
    courses_timed_out: list[dict] = field(default_factory=list)

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

    Set-based: one read of every affected course's achievements finds the rows the rule
    would write (missing or changed); a course with none opens no transaction. A course
    with some opens its own, and there reads those rows again (locked on PostgreSQL, under
    SQLite's write lock) and plans them on what is stored *now*, so a change made
    meanwhile (the website completing an achievement, say) is respected.

    ``dry_run``: planned from the one read, nothing locked and nothing written. ``plan``
    receives every change made (or that would be made), one a line; ``on_course(done,
    total)`` is told after each course."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..teachcomputing.engine import is_lock_timeout

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
    timed_out: list[dict] = []
    everyone = latest.latest
    kept_rows = everyone[~everyone["user_id"].isin(forgotten)]
    counts["skipped_forgotten"] += len(everyone) - len(kept_rows)
    stored_rows = repository.achievements_of_courses(kept_rows["activity_id"].unique())
    sweep = sweep_courses(kept_rows, stored_rows)
    pending_users = {
        activity_id: set(users)
        for activity_id, users in sweep.pending.groupby("activity_id")["user_id"]
    }
    kept_by_course = dict(tuple(kept_rows.groupby("activity_id", sort=False)))
    # Only a dry run plans from the one read; a real night reads each course again.
    stored_by_course = (
        dict(tuple(stored_rows.groupby("activity_id", sort=False))) if dry_run else {}
    )
    dry_runs: list[_PlannedCourse] = []
    course_ids = sorted(everyone["activity_id"].unique())
    for done, activity_id in enumerate(course_ids, start=1):
        kept = kept_by_course.get(activity_id)  # None: every learner forgotten
        users = pending_users.get(activity_id)
        if kept is not None and not users:  # nothing to write: no transaction
            counts.update(sweep.settled.get(activity_id, Counter()))
            applied += 1
        elif kept is not None:
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
            pending = kept[kept["user_id"].isin(users)]
            new_rows = _new_achievements(
                catalogue.programme_ids_by_activity.get(activity_id, []), enrolments_by_user
            )
            try:
                if dry_run:
                    stored = stored_by_course.get(activity_id, stored_rows.iloc[:0])
                    dry_runs.append(_plan_dry_course(pending, stored, new_rows, facts))
                else:
                    counts += _apply_course(repository, pending, facts, new_rows, plan)
                counts.update(sweep.settled.get(activity_id, Counter()))
                applied += 1
            except SQLAlchemyError as error:
                if not is_lock_timeout(error):
                    raise CourseWriteError(
                        f"database error on course {activity['course_uuid']} "
                        f"({activity['title']!r}); that course was rolled back, {applied} "
                        f"course(s) before it were applied: "
                        f"{error.__class__.__name__}: {str(error).splitlines()[0][:300]}"
                    ) from error
                # A row held locked elsewhere: this course is skipped, the rest go on.
                timed_out.append(
                    {
                        "course_uuid": activity["course_uuid"],
                        "title": activity["title"],
                        "error": str(getattr(error, "orig", None) or error).splitlines()[0][:200],
                    }
                )
        if on_course is not None:
            on_course(done, len(course_ids))
    if dry_runs:
        # One read of the outbox for every course's jobs: which ones the night would add.
        new_keys = repository.new_dedup_keys(
            [job["dedup_key"] for course in dry_runs for job in course.jobs]
        )
        for course in dry_runs:
            counts += course.record(plan, new_keys)
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
        courses_timed_out=timed_out,
    )


def _new_achievements(
    programme_ids: list[str],
    enrolments_by_user: dict[str, list[ProgrammeEnrolment]],
) -> Callable[[set[str]], list[dict]]:
    """The rows to create for the users found without an achievement (id, user_id, the
    programme the rule picks)."""

    def rows(users: set[str]) -> list[dict]:
        return [
            {
                "id": str(uuid4()),
                "user_id": user_id,
                "programme_id": programme_for_new_achievement(
                    programme_ids, enrolments_by_user.get(user_id, ())
                ),
            }
            for user_id in sorted(users)
        ]

    return rows


def _apply_course(
    repository: TeachComputingRepository,
    pending: pd.DataFrame,
    facts: CourseFacts,
    new_rows: Callable[[set[str]], list[dict]],
    night_plan: NightPlan,
) -> Counter:
    """One course's transaction: read the ``pending`` users' achievements again (locking
    them), create the missing ones, and write the plan made on what is stored now."""
    from ..teachcomputing.repository import BATCH

    users = set(pending["user_id"])
    with repository.course_transaction(facts.activity_id) as course:
        # More users than one IN list holds (a first night, say): the whole course at once.
        stored = course.achievements(None if len(users) > BATCH else users)
        stored = stored[stored["user_id"].isin(users)]
        wanted = new_rows(users - set(stored["user_id"]))
        created = course.create_achievements(wanted)
        if len(created) < len(wanted):
            # Someone else created some meanwhile (PostgreSQL): read them as they are.
            stored = course.achievements(users)
        else:
            stored = _with_created(stored, created)
        planned = _PlannedCourse.make(pending, stored, created, facts)
        new_jobs = course.write(planned.plan.updates, planned.plan.transitions, planned.jobs)
    return planned.record(night_plan, new_jobs)


def _plan_dry_course(
    pending: pd.DataFrame,
    stored: pd.DataFrame,
    new_rows: Callable[[set[str]], list[dict]],
    facts: CourseFacts,
) -> _PlannedCourse:
    """A dry run's plan of one course, made from the one read, as if every missing
    achievement were created."""
    from ..teachcomputing.repository import ACHIEVEMENT_COLUMNS, planned_achievements

    users = set(pending["user_id"])
    stored = stored.loc[stored["user_id"].isin(users), ACHIEVEMENT_COLUMNS]
    created = planned_achievements(new_rows(users - set(stored["user_id"])))
    stored = _with_created(stored, created).reset_index(drop=True)
    return _PlannedCourse.make(pending, stored, created, facts)


def _with_created(stored: pd.DataFrame, created: pd.DataFrame) -> pd.DataFrame:
    """``stored`` with the achievements just ``created`` (read as ``achievements()`` would)."""
    if created.empty:
        return stored
    return created if stored.empty else pd.concat([stored, created], ignore_index=True)


@dataclass
class _PlannedCourse:
    """One course's plan on what is stored (the achievements created included) and the
    outbox rows it would queue. A real night records it once its transaction has said
    which jobs were new; a dry run once the outbox has been read for every course."""

    activity_id: str
    stored: pd.DataFrame
    created: pd.DataFrame
    plan: CoursePlan
    jobs: list[dict]
    counts: Counter

    @classmethod
    def make(
        cls, pending: pd.DataFrame, stored: pd.DataFrame, created: pd.DataFrame, facts: CourseFacts
    ) -> _PlannedCourse:
        plan = plan_course_progress(pending, stored, facts, created["id"])
        counts = plan_violations(stored, plan) + plan.counts
        counts["created"] += len(created)
        jobs = plan.job_rows(facts.dagster_run_id, facts.now)
        return cls(facts.activity_id, stored, created, plan, jobs, counts)

    def record(self, night_plan: NightPlan, new_keys: set[str]) -> Counter:
        """The plan's changes into ``night_plan``, its jobs only those in ``new_keys``; the
        course's counts."""
        jobs = [job for job in self.jobs if job["dedup_key"] in new_keys]
        night_plan.course(
            self.activity_id,
            stored=self.stored,
            created=self.created,
            updates=self.plan.updates,
            transitions=self.plan.transitions,
            jobs=jobs,
        )
        return self.counts + Counter(follow_up_jobs=len(jobs))


def _programme_enrolments(frame: pd.DataFrame) -> dict[str, list[ProgrammeEnrolment]]:
    enrolments: dict[str, list[ProgrammeEnrolment]] = {}
    for user_id, programme_id, created_at, state in frame.itertuples(index=False):
        enrolments.setdefault(user_id, []).append(
            ProgrammeEnrolment(programme_id, created_at, state)
        )
    return enrolments
