"""Every read and write of the Teach Computing database the pipeline makes.

Set-based statements only (no query per row), one transaction per unit of work, and
idempotent writes: a unit run twice changes nothing the second time.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
from sqlalchemy import Connection, Engine, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..rules import ProgrammeEnrolment, programme_for_new_achievement
from ..steps.course_progress import CoursePlan
from .engine import read_only
from .models import (
    Achievement,
    AchievementTransition,
    Activity,
    FutureLearnOrganisationMembership,
    PendingJob,
    Programme,
    ProgrammeActivity,
    User,
    UserProgrammeEnrolment,
    utcnow,
)

# Rows per INSERT/UPDATE batch: well under SQLite's bound-parameter limit.
BATCH = 2_000


@dataclass(frozen=True)
class LinkResult:
    created: int
    already_linked: int
    conflicts: list[dict] = field(
        default_factory=list
    )  # membership_uuid, linked_user_id, matched_user_id


@dataclass(frozen=True)
class CourseCatalogue:
    """What the database knows about the courses: activities, credits and programmes."""

    activities: pd.DataFrame  # activity_id, course_uuid, title, credit
    programme_ids_by_activity: dict[str, list[str]]
    programme_slugs: dict[str, str]  # programme id -> slug


def _insert(connection: Connection, table):
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def batches(rows: Sequence, size: int = BATCH) -> Iterable[Sequence]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


class TeachComputingRepository:
    def __init__(self, engine: Engine):
        self.engine = engine

    # -- reads -----------------------------------------------------------------------------

    def _frame(self, statement, columns: list[str]) -> pd.DataFrame:
        with read_only(self.engine) as connection:
            rows = connection.execute(statement).all()
        return pd.DataFrame(rows, columns=columns)

    def catalogue(self) -> CourseCatalogue:
        activities = self._frame(
            select(
                Activity.id, Activity.future_learn_course_uuid, Activity.title, Activity.credit
            ).where(Activity.future_learn_course_uuid.is_not(None)),
            ["activity_id", "course_uuid", "title", "credit"],
        )
        links = self._frame(
            select(ProgrammeActivity.activity_id, ProgrammeActivity.programme_id),
            ["activity_id", "programme_id"],
        )
        programmes = self._frame(select(Programme.id, Programme.slug), ["id", "slug"])
        return CourseCatalogue(
            activities=activities,
            programme_ids_by_activity=links.groupby("activity_id")["programme_id"]
            .agg(list)
            .to_dict(),
            programme_slugs=dict(zip(programmes["id"], programmes["slug"], strict=True)),
        )

    def linked_memberships(self) -> pd.DataFrame:
        """membership_uuid, user_id of every linked membership."""
        return self._frame(
            select(
                FutureLearnOrganisationMembership.uuid, FutureLearnOrganisationMembership.user_id
            ),
            ["membership_uuid", "user_id"],
        )

    def users(self) -> pd.DataFrame:
        return self._frame(select(User.id, User.email), ["id", "email"])

    def user_count(self) -> int:
        with read_only(self.engine) as connection:
            return connection.execute(select(func.count()).select_from(User)).scalar_one()

    def current_programme_enrolments(self) -> pd.DataFrame:
        return self._frame(
            select(
                UserProgrammeEnrolment.user_id,
                UserProgrammeEnrolment.programme_id,
                UserProgrammeEnrolment.created_at,
            ).where(UserProgrammeEnrolment.unenrolled_at.is_(None)),
            ["user_id", "programme_id", "created_at"],
        )

    # -- step 1: links ---------------------------------------------------------------------

    def link_memberships(self, links: pd.DataFrame, dagster_run_id: str) -> LinkResult:
        """Link each ``membership_uuid`` to its ``user_id`` in one transaction.

        Idempotent; a membership already linked (to anyone) is never moved, and one linked
        to a different user than we matched is reported as a conflict.
        """
        if links.empty:
            return LinkResult(0, 0)
        table = FutureLearnOrganisationMembership.__table__
        now = utcnow()
        rows = [
            {"uuid": m, "user_id": u, "linked_at": now, "dagster_run_id": dagster_run_id}
            for m, u in zip(links["membership_uuid"], links["user_id"], strict=True)
        ]
        created = 0
        with self.engine.begin() as connection:
            for chunk in batches(rows):
                statement = _insert(connection, table).on_conflict_do_nothing(
                    index_elements=["uuid"]
                )
                created += len(
                    connection.execute(statement.returning(table.c.uuid), list(chunk)).all()
                )
            stored = self._stored_links(connection, [r["uuid"] for r in rows])
        conflicts = [
            {
                "membership_uuid": r["uuid"],
                "linked_user_id": stored[r["uuid"]],
                "matched_user_id": r["user_id"],
            }
            for r in rows
            if stored.get(r["uuid"]) not in (None, r["user_id"])
        ]
        return LinkResult(
            created=created,
            already_linked=len(rows) - created - len(conflicts),
            conflicts=conflicts,
        )

    @staticmethod
    def _stored_links(connection: Connection, membership_uuids: list[str]) -> dict[str, str]:
        table = FutureLearnOrganisationMembership.__table__
        stored: dict[str, str] = {}
        for chunk in batches(membership_uuids):
            stored.update(
                connection.execute(
                    select(table.c.uuid, table.c.user_id).where(table.c.uuid.in_(chunk))
                ).all()
            )
        return stored

    # -- step 2: achievements --------------------------------------------------------------

    def apply_course_progress(
        self,
        activity_id: str,
        latest: pd.DataFrame,
        *,
        programme_ids: Sequence[str],
        programme_enrolments: dict[str, list[ProgrammeEnrolment]],
        plan: Callable[[pd.DataFrame, dict[str, int]], CoursePlan],
        now: datetime | None = None,
    ) -> Counter:
        """Apply one course in one transaction: create missing achievements, lock the course's
        achievements, plan against what is stored *now*, write the plan."""
        now = now or utcnow()
        counts: Counter = Counter()
        with self.engine.begin() as connection:
            stored = self._course_achievements(connection, activity_id)
            missing = sorted(set(latest["user_id"]) - set(stored["user_id"]))
            if missing:
                new_rows = [
                    {
                        "id": str(uuid.uuid4()),
                        "user_id": user_id,
                        "activity_id": activity_id,
                        "programme_id": programme_for_new_achievement(
                            programme_ids, programme_enrolments.get(user_id, ())
                        ),
                        "progress": 0,
                        "current_state": "enrolled",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for user_id in missing
                ]
                table = Achievement.__table__
                for chunk in batches(new_rows):
                    statement = _insert(connection, table).on_conflict_do_nothing(
                        index_elements=["user_id", "activity_id"]
                    )
                    counts["created"] += len(
                        connection.execute(statement.returning(table.c.id), list(chunk)).all()
                    )
                stored = self._course_achievements(connection, activity_id)
            sort_keys = self._last_sort_keys(connection, activity_id)
            course_plan = plan(stored[stored["user_id"].isin(latest["user_id"])], sort_keys)
            counts.update(_plan_violations(stored, course_plan))
            self._write_plan(connection, course_plan)
        counts.update(course_plan.counts)
        counts["pending_jobs"] += len(course_plan.jobs)
        return counts

    def run_audit(self, dagster_run_id: str) -> dict[str, int]:
        """What one Dagster run wrote to achievement_transitions."""
        t = AchievementTransition
        run = t.transition_metadata["dagster_run_id"].as_string() == dagster_run_id
        with read_only(self.engine) as connection:
            total = connection.execute(select(func.count()).where(run)).scalar_one()
            from_complete = connection.execute(
                select(func.count()).where(run, t.from_state == "complete")
            ).scalar_one()
        return {"transitions": total, "transitions_from_complete": from_complete}

    @staticmethod
    def _course_achievements(connection: Connection, activity_id: str) -> pd.DataFrame:
        statement = select(
            Achievement.id,
            Achievement.user_id,
            Achievement.progress,
            Achievement.current_state,
            Achievement.programme_id,
        ).where(Achievement.activity_id == activity_id)
        if connection.dialect.name == "postgresql":
            statement = statement.with_for_update()  # SQLite holds the write lock already
        return pd.DataFrame(
            connection.execute(statement).all(),
            columns=["id", "user_id", "progress", "current_state", "programme_id"],
        )

    @staticmethod
    def _last_sort_keys(connection: Connection, activity_id: str) -> dict[str, int]:
        t = AchievementTransition
        statement = (
            select(t.achievement_id, func.max(t.sort_key))
            .join(Achievement, Achievement.id == t.achievement_id)
            .where(Achievement.activity_id == activity_id)
            .group_by(t.achievement_id)
        )
        return dict(connection.execute(statement).all())

    @staticmethod
    def _write_plan(connection: Connection, plan: CoursePlan) -> None:
        achievements = Achievement.__table__
        transitions = AchievementTransition.__table__
        if plan.updates:
            statement = (
                update(achievements)
                .where(achievements.c.id == bindparam("achievement_id"))
                .values(
                    progress=bindparam("new_progress"),
                    current_state=bindparam("new_state"),
                    updated_at=bindparam("new_updated_at"),
                )
            )
            params = [
                {
                    "achievement_id": u["id"],
                    "new_progress": u["progress"],
                    "new_state": u["current_state"],
                    "new_updated_at": u["updated_at"],
                }
                for u in plan.updates
            ]
            for chunk in batches(params):
                connection.execute(statement, list(chunk))
        if plan.transitions:
            ids = [t["achievement_id"] for t in plan.transitions]
            for chunk in batches(ids):
                connection.execute(
                    update(transitions)
                    .where(
                        transitions.c.achievement_id.in_(chunk), transitions.c.most_recent.is_(True)
                    )
                    .values(most_recent=False)
                )
            for chunk in batches(plan.transitions):
                connection.execute(transitions.insert(), list(chunk))
        if plan.jobs:
            rows = [
                {
                    "job_class": job.job_class,
                    "arguments": job.arguments,
                    "run_at": job.run_at,
                    "dedup_key": job.dedup_key,
                    "created_at": utcnow(),
                }
                for job in plan.jobs
            ]
            for chunk in batches(rows):
                statement = _insert(connection, PendingJob.__table__).on_conflict_do_nothing(
                    index_elements=["dedup_key"]
                )
                connection.execute(statement, list(chunk))


def _plan_violations(stored: pd.DataFrame, plan: CoursePlan) -> Counter:
    """Checked against the stored rows, not the planner's own view: progress never goes down
    and a complete achievement never changes."""
    if not plan.updates:
        return Counter(progress_decreases=0, complete_changed=0)
    updates = pd.DataFrame(plan.updates, columns=["id", "progress"]).merge(
        stored[["id", "progress", "current_state"]], on="id", how="left", suffixes=("", "_stored")
    )
    return Counter(
        progress_decreases=int((updates["progress"] < updates["progress_stored"]).sum()),
        complete_changed=int((updates["current_state"] == "complete").sum()),
    )
