"""Every read and write of the Teach Computing database the jobs make.

The website's tables are written as the website writes them (docs/database.md):
links in ``users.future_learn_organisation_memberships``, achievement state as
statesman transitions. Set-based statements only (no query per row), one transaction per
unit of work, and idempotent writes: a unit run twice changes nothing the second time.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    bindparam,
    cast,
    exists,
    func,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from ..rules import LinkPlan, lookups_naming_forgotten_users, plan_links
from .engine import read_only
from .models import (
    Achievement,
    AchievementTransition,
    Activity,
    MembershipLink,
    MembershipLookup,
    OutboxJob,
    Programme,
    ProgrammeActivity,
    ReportSize,
    User,
    UserProgrammeEnrolment,
    UserProgrammeEnrolmentTransition,
    utcnow,
)
from .types import canonical_uuid_text

# Rows per INSERT/UPDATE batch: well under SQLite's bound-parameter limit.
BATCH = 2_000
# A UUID as UUIDText stores and reads it (types.py): lowercase, with dashes.
CANONICAL_UUID = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Courses per read of their achievements: small statements, each well under the timeout.
COURSES_PER_READ = 200
ENROLLED = "enrolled"
# One course's achievements as CourseWriter reads them: the state is the most recent
# transition's (enrolled without one), last_sort_key the highest sort_key (0 without one).
ACHIEVEMENT_COLUMNS = ["id", "user_id", "progress", "programme_id", "state", "last_sort_key"]


def batches(rows: Sequence, size: int = BATCH) -> Iterable[Sequence]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@dataclass(frozen=True)
class LinkResult:
    created: int
    already_linked: int
    conflicts: list[dict] = field(
        default_factory=list
    )  # membership_uuid, linked_user_id, matched_user_id
    links: pd.DataFrame = field(  # the links made: membership_uuid, user_id, matched_by
        default_factory=lambda: pd.DataFrame(columns=["membership_uuid", "user_id", "matched_by"])
    )


@dataclass(frozen=True)
class ForgetResult:
    link_rows: int  # link rows that named a forgotten user (deleted, or would be)
    lookups_erased: int  # lookups whose email named one (erased, or would be)


@dataclass(frozen=True)
class CourseCatalogue:
    """What the database knows about the courses: activities, credits and programmes."""

    activities: pd.DataFrame  # activity_id, course_uuid, title, credit, category
    programme_ids_by_activity: dict[str, list[str]]
    programmes: pd.DataFrame  # id, slug, type


def _insert(connection: Connection, table):
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


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
                Activity.id,
                Activity.future_learn_course_uuid,
                Activity.title,
                Activity.credit,
                Activity.category,
            ).where(Activity.future_learn_course_uuid.is_not(None)),
            ["activity_id", "course_uuid", "title", "credit", "category"],
        )
        # The website stores the course UUID as varchar: compare canonical lowercase UUIDs.
        activities["course_uuid"] = activities["course_uuid"].map(canonical_uuid_text)
        links = self._frame(
            select(ProgrammeActivity.activity_id, ProgrammeActivity.programme_id).where(
                ProgrammeActivity.activity_id.is_not(None),
                ProgrammeActivity.programme_id.is_not(None),
            ),
            ["activity_id", "programme_id"],
        )
        programmes = self._frame(
            select(Programme.id, Programme.slug, Programme.type), ["id", "slug", "type"]
        )
        return CourseCatalogue(
            activities=activities,
            programme_ids_by_activity={
                a: sorted(set(p)) for a, p in links.groupby("activity_id")["programme_id"]
            },
            programmes=programmes,
        )

    def linked_memberships(self) -> pd.DataFrame:
        """membership_uuid, user_id for every membership in some user's
        ``future_learn_organisation_memberships``, whoever put it there (once each)."""
        return self.membership_array_entries().drop_duplicates("membership_uuid", ignore_index=True)

    def membership_array_entries(self) -> pd.DataFrame:
        """Every entry of every user's memberships array, duplicates included (there must be
        none: a membership in two arrays, or twice in one, is a bug this shows)."""
        with read_only(self.engine) as connection:
            if connection.dialect.name == "postgresql":
                statement = text(
                    "SELECT unnest(future_learn_organisation_memberships), id FROM users"
                )
            else:
                statement = text(
                    "SELECT m.value, users.id FROM users, "
                    "json_each(users.future_learn_organisation_memberships) AS m"
                )
            rows = connection.execute(statement).all()
        frame = pd.DataFrame(rows, columns=["membership_uuid", "user_id"], dtype=object)
        frame["membership_uuid"] = frame["membership_uuid"].map(
            lambda v: canonical_uuid_text(str(v))
        )
        frame["user_id"] = frame["user_id"].map(lambda v: canonical_uuid_text(str(v)))
        return frame

    def users(self) -> pd.DataFrame:
        """id, email (may be null), forgotten (bool) of every user."""
        frame = self._frame(
            select(User.id, User.email, func.coalesce(User.forgotten, False)),
            ["id", "email", "forgotten"],
        )
        frame["forgotten"] = frame["forgotten"].astype(bool)
        return frame

    def forgotten_user_ids(self) -> set[str]:
        with read_only(self.engine) as connection:
            return set(connection.scalars(select(User.id).where(User.forgotten.is_(True))))

    def programme_enrolments(self) -> pd.DataFrame:
        """user_id, programme_id, created_at, state: each programme enrolment, its state the
        ``to_state`` of its most recent transition (``enrolled`` when it has none)."""
        t = UserProgrammeEnrolmentTransition
        return self._frame(
            select(
                UserProgrammeEnrolment.user_id,
                UserProgrammeEnrolment.programme_id,
                UserProgrammeEnrolment.created_at,
                func.coalesce(t.to_state, ENROLLED),
            )
            .outerjoin(
                t,
                and_(t.user_programme_enrolment_id == UserProgrammeEnrolment.id, t.most_recent),
            )
            .where(
                UserProgrammeEnrolment.user_id.is_not(None),
                UserProgrammeEnrolment.programme_id.is_not(None),
            ),
            ["user_id", "programme_id", "created_at", "state"],
        )

    # -- step 1: links ---------------------------------------------------------------------

    def plan_links(self, links: pd.DataFrame) -> LinkPlan:
        """Which of ``links`` (membership_uuid, user_id, matched_by) would be made now, by the
        users' arrays as they are (read only): see ``plan_links``."""
        return plan_links(links, self.linked_memberships())

    def link_memberships(self, links: pd.DataFrame, dagster_run_id: str) -> LinkResult:
        """Link each ``membership_uuid`` to its ``user_id`` (``matched_by`` says how), in one
        transaction: a ``partners_dagster_membership_links`` row, and the UUID appended to
        the user's ``future_learn_organisation_memberships``.

        The users' arrays are the truth: a membership in no array is linked, and a link row
        left naming it (the website removed it, or deleted or forgot the user) is replaced;
        one in an array is never moved (another user's is a conflict, reported). The link
        row's primary key decides between two nights running at once: only the transaction
        whose row went in appends, so a membership never lands in two arrays or twice in
        one, and no table lock is taken on ``users``.
        """
        plan = self.plan_links(links)
        if plan.links.empty:
            return LinkResult(0, plan.already_linked, plan.conflicts, plan.links)
        now = utcnow()
        rows = [
            {
                "membership_uuid": m,
                "user_id": u,
                "matched_by": how,
                "linked_at": now,
                "dagster_run_id": dagster_run_id,
            }
            for m, u, how in zip(
                plan.links["membership_uuid"],
                plan.links["user_id"],
                plan.links["matched_by"],
                strict=True,
            )
        ]
        table = MembershipLink.__table__
        won: list[str] = []
        with self.engine.begin() as connection:
            memberships = [r["membership_uuid"] for r in rows]
            for chunk in batches(memberships):
                connection.execute(_delete_stale_links(connection, chunk))
            for chunk in batches(rows):
                statement = _insert(connection, table).on_conflict_do_nothing(
                    index_elements=["membership_uuid"]
                )
                won += connection.scalars(
                    statement.returning(table.c.membership_uuid), list(chunk)
                ).all()
            won_set = set(won)
            appended = [r for r in rows if r["membership_uuid"] in won_set]
            _append_memberships(connection, appended, now)
            stored = _stored_links(connection, [m for m in memberships if m not in won_set])
        # Another night linked some meanwhile: as the plan says of those already linked.
        raced = [r for r in rows if r["membership_uuid"] not in won_set]
        conflicts = [
            {
                "membership_uuid": r["membership_uuid"],
                "linked_user_id": stored[r["membership_uuid"]],
                "matched_user_id": r["user_id"],
            }
            for r in raced
            if stored.get(r["membership_uuid"]) not in (None, r["user_id"])
        ]
        return LinkResult(
            created=len(won_set),
            already_linked=plan.already_linked + len(raced) - len(conflicts),
            conflicts=plan.conflicts + conflicts,
            links=plan.links[plan.links["membership_uuid"].isin(won_set)].reset_index(drop=True),
        )

    def forget_forgotten_users(self, *, dry_run: bool = False) -> ForgetResult:
        """What this project keeps that names a forgotten user goes: their link rows, and the
        email of every lookup whose ``external_learner_id`` names them (by id or email, and no
        user who is not forgotten), which stays remembered as answered (``forgotten_at``)."""
        users = self.users()
        forgotten = users[users["forgotten"]]
        if forgotten.empty:
            return ForgetResult(0, 0)
        lookups = self.membership_lookups()
        naming = lookups_naming_forgotten_users(lookups, users)
        forgotten_ids = list(forgotten["id"])
        table = MembershipLink.__table__
        with read_only(self.engine) if dry_run else self.engine.begin() as connection:
            link_rows = 0
            for chunk in batches(forgotten_ids):
                if dry_run:
                    link_rows += connection.execute(
                        select(func.count()).where(table.c.user_id.in_(chunk))
                    ).scalar_one()
                else:
                    link_rows += connection.execute(
                        table.delete().where(table.c.user_id.in_(chunk))
                    ).rowcount
            if not dry_run:
                lookups_table = MembershipLookup.__table__
                now = utcnow()
                for chunk in batches(naming):
                    connection.execute(
                        update(lookups_table)
                        .where(lookups_table.c.membership_uuid.in_(chunk))
                        .values(external_learner_id=None, forgotten_at=now)
                    )
        return ForgetResult(link_rows=link_rows, lookups_erased=len(naming))

    # -- membership lookups ------------------------------------------------------------------

    def membership_lookups(self) -> pd.DataFrame:
        """What the API last said about each membership looked up, and what it carries on
        the latest reports (``enrolments``, ``courses``: null until counted)."""
        frame = self._frame(
            select(
                MembershipLookup.membership_uuid,
                MembershipLookup.status,
                MembershipLookup.learner_uuid,
                MembershipLookup.external_learner_id,
                MembershipLookup.fetched_at,
                MembershipLookup.first_fetched_at,
                MembershipLookup.enrolments,
                MembershipLookup.courses,
                MembershipLookup.forgotten_at,
            ),
            [
                "membership_uuid",
                "status",
                "learner_uuid",
                "external_learner_id",
                "fetched_at",
                "first_fetched_at",
                "enrolments",
                "courses",
                "forgotten_at",
            ],
        )
        for column in ("enrolments", "courses"):
            frame[column] = frame[column].astype("Int64")
        return frame

    def record_lookups(
        self, lookups: pd.DataFrame, dagster_run_id: str, counts: pd.DataFrame | None = None
    ) -> int:
        """Remember each API answer (found or not_found); failed lookups are not answers.
        An answer marked ``forgotten`` (its external id named a forgotten user) is kept with
        no external id and ``forgotten_at`` set.

        ``counts`` (membership_uuid, enrolments, courses): what tonight's reports carry for
        each membership. Stored with tonight's answers, and for each membership remembered
        already whose counts changed (a steady night rewrites few rows). One transaction."""
        answered = lookups[lookups["fetch_status"].isin(["found", "not_found"])]
        counted: dict[str, tuple[int, int]] = (
            {}
            if counts is None
            else {
                m: (int(e), int(c))
                for m, e, c in zip(
                    counts["membership_uuid"], counts["enrolments"], counts["courses"], strict=True
                )
            }
        )
        now = utcnow()
        forgotten = (
            answered["forgotten"].astype(bool)
            if "forgotten" in answered
            else pd.Series(False, index=answered.index)
        )
        rows = [
            {
                "membership_uuid": m,
                "status": status,
                "learner_uuid": learner if isinstance(learner, str) else None,
                "external_learner_id": None
                if erased or not isinstance(external, str)
                else external,
                "forgotten_at": now if erased else None,
                "fetched_at": now,
                "first_fetched_at": now,
                "dagster_run_id": dagster_run_id,
                "enrolments": counted.get(m, (None, None))[0],
                "courses": counted.get(m, (None, None))[1],
            }
            for m, status, learner, external, erased in zip(
                answered["membership_uuid"],
                answered["fetch_status"],
                answered["learner_uuid"],
                answered["external_learner_id"],
                forgotten,
                strict=True,
            )
        ]
        table = MembershipLookup.__table__
        with self.engine.begin() as connection:
            for chunk in batches(rows):
                statement = _insert(connection, table)
                kept = {
                    "status": statement.excluded.status,
                    "learner_uuid": statement.excluded.learner_uuid,
                    "external_learner_id": statement.excluded.external_learner_id,
                    "forgotten_at": statement.excluded.forgotten_at,
                    "fetched_at": statement.excluded.fetched_at,
                    "dagster_run_id": statement.excluded.dagster_run_id,
                }
                if counts is not None:  # else the stored counts stay
                    kept |= {
                        "enrolments": statement.excluded.enrolments,
                        "courses": statement.excluded.courses,
                    }
                statement = statement.on_conflict_do_update(
                    index_elements=["membership_uuid"], set_=kept
                )
                connection.execute(statement, list(chunk))
            answered_now = {r["membership_uuid"] for r in rows}
            _update_changed_counts(
                connection,
                {m: c for m, c in counted.items() if m not in answered_now},
            )
        return len(rows)

    # -- report sizes ------------------------------------------------------------------------

    def report_sizes(self) -> dict[str, int]:
        """run_uuid -> how many enrolments its last accepted report held."""
        with read_only(self.engine) as connection:
            rows = connection.execute(select(ReportSize.run_uuid, ReportSize.enrolments)).all()
        return {str(run): int(size) for run, size in rows}

    def remember_report_sizes(self, sizes: pd.DataFrame, dagster_run_id: str) -> int:
        """Remember each accepted report's size (run_uuid, course_uuid, enrolments); only
        the rows whose size changed are written. One transaction."""
        if sizes.empty:
            return 0
        stored = self.report_sizes()
        now = utcnow()
        rows = [
            {
                "run_uuid": run,
                "course_uuid": course,
                "enrolments": int(size),
                "recorded_at": now,
                "dagster_run_id": dagster_run_id,
            }
            for run, course, size in zip(
                sizes["run_uuid"], sizes["course_uuid"], sizes["enrolments"], strict=True
            )
            if stored.get(run) != int(size)
        ]
        # One order for every writer: two nights upserting the same runs in the order their
        # reports arrived could deadlock on PostgreSQL.
        rows.sort(key=lambda row: row["run_uuid"])
        table = ReportSize.__table__
        with self.engine.begin() as connection:
            for chunk in batches(rows):
                statement = _insert(connection, table)
                statement = statement.on_conflict_do_update(
                    index_elements=["run_uuid"],
                    set_={
                        "enrolments": statement.excluded.enrolments,
                        "recorded_at": statement.excluded.recorded_at,
                        "dagster_run_id": statement.excluded.dagster_run_id,
                    },
                )
                connection.execute(statement, list(chunk))
        return len(rows)

    # -- step 2: achievements --------------------------------------------------------------

    def achievements_of_courses(self, activity_ids: Sequence[str]) -> pd.DataFrame:
        """activity_id and ACHIEVEMENT_COLUMNS of every achievement of these courses, in one
        read that locks nothing: what the set-based progress pass plans from before it opens
        a transaction for the courses that have something to write."""
        rows: list[Any] = []
        with read_only(self.engine) as connection:
            for chunk in batches(sorted(set(activity_ids)), COURSES_PER_READ):
                statement = _achievements_statement(
                    Achievement.activity_id.in_(chunk), bulk=connection.dialect.name
                )
                rows += connection.execute(statement).all()
        frame = pd.DataFrame(rows, columns=["activity_id", *ACHIEVEMENT_COLUMNS])
        # Read as text (a Python call per value costs seconds on a night's rows), then made
        # canonical as UUIDText makes them, once per column.
        for column in ("activity_id", "id", "user_id", "programme_id"):
            frame[column] = _canonical_uuids(frame[column])
        return frame

    def new_dedup_keys(self, keys: Sequence[str]) -> set[str]:
        """The keys among ``keys`` that no outbox row holds yet (read only)."""
        with read_only(self.engine) as connection:
            return _new_dedup_keys(connection, list(keys))

    @contextmanager
    def course_transaction(self, activity_id: str) -> Iterator[CourseWriter]:
        """One course's achievements in one transaction (locked on PostgreSQL, under SQLite's
        write lock there): read what is stored *now*, then write the plan made from it. A dry
        run opens none: it plans from ``achievements_of_courses``."""
        with self.engine.begin() as connection:
            yield CourseWriter(connection, activity_id)

    def run_audit(self, dagster_run_id: str) -> dict[str, int]:
        """What one Dagster run wrote to achievement_transitions, and how many of those moved
        an achievement that was already complete (there must be none)."""
        t = AchievementTransition
        earlier = aliased(AchievementTransition)
        run = t.transition_metadata["dagster_run_id"].as_string() == dagster_run_id
        with read_only(self.engine) as connection:
            total = connection.execute(select(func.count()).where(run)).scalar_one()
            from_complete = connection.execute(
                select(func.count()).where(
                    run,
                    exists().where(
                        earlier.achievement_id == t.achievement_id,
                        earlier.sort_key < t.sort_key,
                        earlier.to_state == "complete",
                    ),
                )
            ).scalar_one()
        return {"transitions": total, "transitions_from_complete": from_complete}

    def user_history(self, user_id: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """What ``partners-dagster audit`` shows of one user: every membership in their array
        with how and when it was linked when a link row says so (uuid, linked_at,
        dagster_run_id, matched_by), their achievements (id, activity, progress, updated_at;
        by activity title) and achievement transitions (achievement_id, to_state, most_recent,
        created_at, meta; by sort_key)."""
        t = AchievementTransition
        with read_only(self.engine) as connection:
            array = connection.execute(
                select(User.future_learn_organisation_memberships).where(User.id == user_id)
            ).scalar_one()
        links = self._frame(
            select(
                MembershipLink.membership_uuid,
                MembershipLink.linked_at,
                MembershipLink.dagster_run_id,
                MembershipLink.matched_by,
            ).where(MembershipLink.user_id == user_id),
            ["uuid", "linked_at", "dagster_run_id", "matched_by"],
        )
        achievements = self._frame(
            select(Achievement.id, Activity.title, Achievement.progress, Achievement.updated_at)
            .join(Activity, Activity.id == Achievement.activity_id)
            .where(Achievement.user_id == user_id)
            .order_by(Activity.title),
            ["id", "activity", "progress", "updated_at"],
        )
        transitions = self._frame(
            select(t.achievement_id, t.to_state, t.most_recent, t.created_at, t.transition_metadata)
            .join(Achievement, Achievement.id == t.achievement_id)
            .where(Achievement.user_id == user_id)
            .order_by(t.achievement_id, t.sort_key),
            ["achievement_id", "to_state", "most_recent", "created_at", "meta"],
        )
        # The website, or the old jobs, may have linked some before partners_dagster.
        memberships = pd.DataFrame(
            {"uuid": [canonical_uuid_text(str(m)) for m in array or []]}, dtype=object
        ).merge(links.astype({"uuid": object}), on="uuid", how="left")
        return memberships, achievements, transitions

    # -- follow-up jobs (the outbox) ---------------------------------------------------------

    def outbox(self, *, pending_only: bool = False) -> pd.DataFrame:
        o = OutboxJob
        statement = select(
            o.id,
            o.job_class,
            o.queue,
            o.arguments,
            o.run_at,
            o.dedup_key,
            o.achievement_id,
            o.user_id,
            o.created_at,
            o.dispatched_at,
            o.jid,
            o.dagster_run_id,
            o.delivery_error,
        ).order_by(o.id)
        if pending_only:
            statement = statement.where(o.dispatched_at.is_(None))
        return self._frame(
            statement,
            [
                "id",
                "job_class",
                "queue",
                "arguments",
                "run_at",
                "dedup_key",
                "achievement_id",
                "user_id",
                "created_at",
                "dispatched_at",
                "jid",
                "dagster_run_id",
                "delivery_error",
            ],
        )

    def outbox_to_deliver(self, *, only_run_id: str | None = None) -> list[Any]:
        """The rows delivery pushes: undelivered and not set aside, lowest id first, as
        (id, job_class, queue, arguments, run_at, created_at, jid) tuples; ``only_run_id``:
        only those that Dagster run queued."""
        o = OutboxJob
        statement = (
            select(o.id, o.job_class, o.queue, o.arguments, o.run_at, o.created_at, o.jid)
            .where(o.dispatched_at.is_(None), o.delivery_error.is_(None))
            .order_by(o.id)
        )
        if only_run_id is not None:
            statement = statement.where(o.dagster_run_id == only_run_id)
        with read_only(self.engine) as connection:
            return connection.execute(statement).all()

    def outbox_waiting(self) -> tuple[int, datetime | None]:
        """How many outbox rows wait for delivery, and when the oldest was written (rows set
        aside with an error are counted by ``outbox_set_aside``, not here)."""
        o = OutboxJob
        with read_only(self.engine) as connection:
            count, oldest = connection.execute(
                select(func.count(), func.min(o.created_at)).where(
                    o.dispatched_at.is_(None), o.delivery_error.is_(None)
                )
            ).one()
        return count, oldest

    def outbox_set_aside(self) -> int:
        """How many undelivered outbox rows delivery has set aside with an error."""
        o = OutboxJob
        with read_only(self.engine) as connection:
            return connection.execute(
                select(func.count()).where(o.dispatched_at.is_(None), o.delivery_error.is_not(None))
            ).scalar_one()

    def claim_jids(self, jids: dict[int, str]) -> dict[int, str | None]:
        """Record the Sidekiq jid each row will be pushed with, before the push, in one
        transaction; a row that has one keeps it (a retry must push the same jid, so the
        marker can be checked). Returns the jid each row holds afterwards: another one where a
        delivery running at the same time claimed the row first."""
        o = OutboxJob.__table__
        ids = list(jids)
        held: dict[int, str | None] = {}
        with self.engine.begin() as connection:
            for chunk in batches(ids):
                if connection.dialect.name == "postgresql":
                    # Two arrays, one statement: executemany would be a round trip per row.
                    connection.execute(
                        text(
                            f"UPDATE {o.name} AS o SET jid = v.jid"
                            " FROM unnest(CAST(:ids AS bigint[]), CAST(:jids AS varchar[]))"
                            " AS v(id, jid) WHERE o.id = v.id AND o.jid IS NULL"
                        ),
                        {"ids": list(chunk), "jids": [jids[row_id] for row_id in chunk]},
                    )
                else:
                    connection.execute(
                        update(o)
                        .where(o.c.id == bindparam("row_id"), o.c.jid.is_(None))
                        .values(jid=bindparam("new_jid")),
                        [{"row_id": row_id, "new_jid": jids[row_id]} for row_id in chunk],
                    )
                # A statement of its own: it sees what a delivery running at the same time
                # committed while this UPDATE waited for its row locks.
                held.update(
                    connection.execute(select(o.c.id, o.c.jid).where(o.c.id.in_(chunk))).all()
                )
        return held

    def set_aside(self, errors: dict[int, str]) -> None:
        """Set undelivered rows aside with the reason they cannot be delivered."""
        o = OutboxJob.__table__
        with self.engine.begin() as connection:
            connection.execute(
                update(o)
                .where(o.c.id == bindparam("row_id"), o.c.dispatched_at.is_(None))
                .values(delivery_error=bindparam("error")),
                [{"row_id": row_id, "error": error} for row_id, error in errors.items()],
            )

    def mark_dispatched(self, outbox_ids: Sequence[int], dispatched_at: datetime) -> None:
        o = OutboxJob.__table__
        with self.engine.begin() as connection:
            for chunk in batches(list(outbox_ids)):
                connection.execute(
                    update(o)
                    .where(o.c.id.in_(chunk), o.c.dispatched_at.is_(None))
                    .values(dispatched_at=dispatched_at)
                )


class CourseWriter:
    """The reads and writes of one course's transaction (see ``course_transaction``)."""

    def __init__(self, connection: Connection, activity_id: str):
        self.connection = connection
        self.activity_id = activity_id

    def create_achievements(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Insert achievements (id, user_id, programme_id) at progress 0 with no transition
        (state ``enrolled``); one that exists already is left. Returns the ones created, as
        ``achievements()`` would read them, without reading them back."""
        if not rows:
            return pd.DataFrame(columns=ACHIEVEMENT_COLUMNS)
        by_id = {row["id"]: row for row in rows}
        now = utcnow()
        table = Achievement.__table__
        values = [
            {
                **row,
                "activity_id": self.activity_id,
                "progress": 0,
                "created_at": now,
                "updated_at": now,
            }
            for row in rows
        ]
        created: list[str] = []
        for chunk in batches(values):
            statement = _insert(self.connection, table).on_conflict_do_nothing(
                index_elements=["activity_id", "user_id"]
            )
            created += self.connection.scalars(statement.returning(table.c.id), list(chunk)).all()
        return _created_frame(created, by_id)

    def achievements(self, user_ids: Collection[str] | None = None) -> pd.DataFrame:
        """id, user_id, progress, programme_id, state, last_sort_key of the course's
        achievements (``user_ids``: only those users'), locked for this transaction on
        PostgreSQL."""
        users = None if user_ids is None else sorted(set(user_ids))
        rows: list[Any] = []
        for chunk in [None] if users is None else batches(users):
            where = Achievement.activity_id == self.activity_id
            if chunk is not None:
                where = and_(where, Achievement.user_id.in_(chunk))
            statement = _achievements_statement(where)
            if self.connection.dialect.name == "postgresql":
                # SQLite holds the write lock already; PostgreSQL locks the achievements.
                statement = statement.with_for_update(of=Achievement)
            rows += self.connection.execute(statement).all()
        return pd.DataFrame(rows, columns=ACHIEVEMENT_COLUMNS)

    def write(
        self,
        updates: list[dict[str, Any]],
        transitions: list[dict[str, Any]],
        jobs: list[dict[str, Any]],
    ) -> set[str]:
        """Progress and ``updated_at`` of changed achievements; each move as statesman writes
        it (the previous most recent one flipped, the new one most recent); and the follow-up
        jobs, each once by its key. Returns the keys of the jobs that were new."""
        achievements = Achievement.__table__
        transitions_table = AchievementTransition.__table__
        if updates:
            statement = (
                update(achievements)
                .where(achievements.c.id == bindparam("achievement_id"))
                .values(progress=bindparam("new_progress"), updated_at=bindparam("now"))
            )
            params = [
                {"achievement_id": u["id"], "new_progress": u["progress"], "now": u["updated_at"]}
                for u in updates
            ]
            for chunk in batches(params):
                self.connection.execute(statement, list(chunk))
        if transitions:
            now = transitions[0]["updated_at"]
            ids = [t["achievement_id"] for t in transitions]
            for chunk in batches(ids):
                self.connection.execute(
                    update(transitions_table)
                    .where(
                        transitions_table.c.achievement_id.in_(chunk),
                        transitions_table.c.most_recent.is_(True),
                    )
                    .values(most_recent=False, updated_at=now)
                )
            for chunk in batches(transitions):
                self.connection.execute(transitions_table.insert(), list(chunk))
        new_jobs: set[str] = set()
        if jobs:
            table = OutboxJob.__table__
            for chunk in batches(jobs):
                statement = _insert(self.connection, table).on_conflict_do_nothing(
                    index_elements=["dedup_key"]
                )
                new_jobs.update(
                    self.connection.scalars(statement.returning(table.c.dedup_key), list(chunk))
                )
        return new_jobs


def _achievements_statement(where, *, bulk: str | None = None):
    """Achievements as ACHIEVEMENT_COLUMNS: the state is the most recent transition's
    (enrolled without one), last_sort_key the highest sort_key (0 without one). ``bulk``
    (the dialect's name): activity_id first, and the UUIDs as plain text (see
    ``_canonical_uuids``): PostgreSQL's own text form, SQLite's stored text as it is."""
    a, t = Achievement, AchievementTransition
    earlier = aliased(AchievementTransition)
    last_sort_key = (
        select(func.max(earlier.sort_key))
        .where(earlier.achievement_id == a.id)
        .correlate(a)
        .scalar_subquery()
    )
    uuids = [a.activity_id, a.id, a.user_id, a.programme_id]
    if bulk == "postgresql":
        uuids = [cast(column, String) for column in uuids]
    elif bulk:
        uuids = [type_coerce(column, String) for column in uuids]
    activity_id, id_, user_id, programme_id = uuids
    columns = [
        id_,
        user_id,
        a.progress,
        programme_id,
        func.coalesce(t.to_state, ENROLLED),
        func.coalesce(last_sort_key, 0),
    ]
    return (
        select(*([activity_id] if bulk else []), *columns)
        .outerjoin(t, and_(t.achievement_id == a.id, t.most_recent.is_(True)))
        .where(where)
    )


def _canonical_uuids(values: pd.Series) -> pd.Series:
    """UUIDs read as text, canonical as ``UUIDText`` reads them (None stays None)."""
    canonical = CANONICAL_UUID.fullmatch
    return pd.Series(
        [
            value if value is None or canonical(value) else canonical_uuid_text(str(value))
            for value in values.tolist()
        ],
        index=values.index,
        dtype=object,
    )


def _new_dedup_keys(connection: Connection, keys: list[str]) -> set[str]:
    table = OutboxJob.__table__
    held: set[str] = set()
    for chunk in batches(keys):
        held.update(
            connection.scalars(select(table.c.dedup_key).where(table.c.dedup_key.in_(chunk)))
        )
    return set(keys) - held


def planned_achievements(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Achievements (id, user_id, programme_id) a dry run would create, as
    ``CourseWriter.achievements()`` would read them once created."""
    return _created_frame([row["id"] for row in rows], {row["id"]: row for row in rows})


def _created_frame(created: Sequence[str], by_id: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Achievements just created, as ``CourseWriter.achievements()`` would read them."""
    return pd.DataFrame(
        [(i, by_id[i]["user_id"], 0, by_id[i]["programme_id"], ENROLLED, 0) for i in created],
        columns=ACHIEVEMENT_COLUMNS,
    )


def _append_memberships(connection: Connection, rows: list[dict], now: datetime) -> None:
    """Append each membership to its user's array, unless the array already holds it."""
    if not rows:
        return
    by_user: dict[str, list[str]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row["membership_uuid"])
    if connection.dialect.name == "postgresql":
        statement = text(
            # The website's column may hold NULL (schema.rb has no null: false): treat it as {}.
            "UPDATE users SET future_learn_organisation_memberships = "
            "coalesce(future_learn_organisation_memberships, '{}') || ARRAY(SELECT m FROM unnest("
            "CAST(:memberships AS text[])) AS m WHERE NOT m = ANY(coalesce("
            "future_learn_organisation_memberships, '{}'))), "
            "updated_at = :now WHERE id = CAST(:user_id AS uuid)"
        )
        params = [
            {"user_id": u, "memberships": ms, "now": now.replace(tzinfo=None)}
            for u, ms in by_user.items()
        ]
    else:
        statement = text(
            f"UPDATE users SET future_learn_organisation_memberships = json_insert("
            f"{_SQLITE_ARRAY}, '$[#]', :membership), "
            # SQLite ids are text: match one written in upper case by someone else too.
            f"updated_at = :now WHERE id IN (:user_id, upper(:user_id)) AND NOT EXISTS (SELECT 1 FROM "
            f"json_each({_SQLITE_ARRAY}) WHERE value = :membership)"
        )
        params = [
            {"user_id": r["user_id"], "membership": r["membership_uuid"], "now": _sqlite_time(now)}
            for r in rows
        ]
    for chunk in batches(params):
        connection.execute(statement, list(chunk))


# A user's array on SQLite, read as a JSON array: null, and the '{}' that PostgreSQL's
# default spells (a table made by hand, or by an older create-teachcomputing-tables), are
# empty; json_insert('{}', '$[#]', x) would return '{}' and lose the link.
_SQLITE_ARRAY = (
    "CASE WHEN coalesce(users.future_learn_organisation_memberships, '{}') IN ('{}', '') "
    "THEN '[]' ELSE users.future_learn_organisation_memberships END"
)


def _sqlite_time(moment: datetime) -> str:
    # As SQLAlchemy's DateTime writes it on SQLite: naive UTC with microseconds.
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _delete_stale_links(connection: Connection, membership_uuids: Sequence[str]):
    """The link rows of ``membership_uuids`` that name a membership no user's array holds
    (checked again inside the transaction, so a link another night just made stays)."""
    table = MembershipLink.__table__
    if connection.dialect.name == "postgresql":
        in_no_array = text(
            "NOT EXISTS (SELECT 1 FROM users WHERE future_learn_organisation_memberships @> "
            "ARRAY[CAST(partners_dagster_membership_links.membership_uuid AS text)])"
        )
    else:
        in_no_array = text(
            f"NOT EXISTS (SELECT 1 FROM users, json_each({_SQLITE_ARRAY}) AS m "
            "WHERE m.value = partners_dagster_membership_links.membership_uuid)"
        )
    return table.delete().where(table.c.membership_uuid.in_(list(membership_uuids)), in_no_array)


def _stored_links(connection: Connection, membership_uuids: list[str]) -> dict[str, str]:
    table = MembershipLink.__table__
    stored: dict[str, str] = {}
    for chunk in batches(membership_uuids):
        stored.update(
            connection.execute(
                select(table.c.membership_uuid, table.c.user_id).where(
                    table.c.membership_uuid.in_(chunk)
                )
            ).all()
        )
    return stored


def _update_changed_counts(connection: Connection, counted: dict[str, tuple[int, int]]) -> None:
    """Store the counts of remembered lookups, writing only the rows whose counts changed."""
    table = MembershipLookup.__table__
    stored: dict[str, tuple] = {}
    for chunk in batches(list(counted)):
        stored.update(
            (m, (e, c))
            for m, e, c in connection.execute(
                select(table.c.membership_uuid, table.c.enrolments, table.c.courses).where(
                    table.c.membership_uuid.in_(chunk)
                )
            )
        )
    changed = [
        {"m": m, "e": e, "c": c}
        for m, (e, c) in counted.items()
        if m in stored and stored[m] != (e, c)
    ]
    statement = (
        update(table)
        .where(table.c.membership_uuid == bindparam("m"))
        .values(enrolments=bindparam("e"), courses=bindparam("c"))
    )
    for chunk in batches(changed):
        connection.execute(statement, list(chunk))
