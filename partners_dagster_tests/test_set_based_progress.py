"""Step 2's set-based pass on real SQLite and PostgreSQL: one read of every course's
achievements plans the night; only a course with something to write opens its own
transaction, and there reads its rows again, so a change the website made meanwhile wins.
What it writes is the row-by-row rule's result."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import event, text

from partners_dagster.rules import State, next_achievement
from partners_dagster.steps.latest_enrolment import LATEST_COLUMNS, LatestEnrolmentSet
from partners_dagster.steps.night_plan import NightPlan
from partners_dagster.steps.progress_update import update_achievement_progress
from partners_dagster.teachcomputing.engine import READ_ONLY, make_engine
from partners_dagster.teachcomputing.models import (
    Achievement,
    AchievementTransition,
    Activity,
    Programme,
    ProgrammeActivity,
    User,
)
from partners_dagster.teachcomputing.repository import TeachComputingRepository

NOW = datetime(2027, 1, 12, 2, 0, tzinfo=UTC)
EARLIER = datetime(2027, 1, 1, 2, 0, tzinfo=UTC)
RUN = "e0e0e0e0-0000-4000-8000-000000000001"
CSA = "f1f1f1f1-0000-4000-8000-000000000001"
# What is stored before the night: none (created tonight), or (progress, transitions).
STORED = [
    None,
    (0, []),
    (30, ["in_progress"]),
    (59, ["in_progress"]),
    (70, ["in_progress", "complete"]),
    (20, ["in_progress", "dropped"]),
    (0, ["dropped"]),
    (45, ["in_progress", "dropped", "in_progress"]),
]
# The latest enrolment: (new progress, deactivated).
LATEST = [(0, False), (30, False), (59, False), (60, False), (100, False), (30, True), (70, True)]
COURSES = {  # activity -> course UUID; "csa" is a CS Accelerator course (its jobs too)
    "a0a0a0a0-0000-4000-8000-000000000001": "c0c0c0c0-0000-4000-8000-000000000001",
    "a0a0a0a0-0000-4000-8000-000000000002": "c0c0c0c0-0000-4000-8000-000000000002",
    "a0a0a0a0-0000-4000-8000-000000000003": "c0c0c0c0-0000-4000-8000-000000000003",
}
CSA_ACTIVITY, PLAIN_ACTIVITY, STEADY_ACTIVITY = COURSES


def _user(i: int) -> str:
    return f"d0d0d0d0-0000-4000-8000-{i:012d}"


FORGOTTEN = _user(999)


def _cases() -> list[tuple[str, str, tuple | None, tuple[int, bool]]]:
    """(activity, user, stored, latest): every pair of STORED and LATEST on two courses (the
    second pairs them the other way round), and a third course where nothing changes."""
    pairs = list(itertools.product(STORED, LATEST))
    cases = [(CSA_ACTIVITY, _user(i), s, n) for i, (s, n) in enumerate(pairs)]
    cases += [(PLAIN_ACTIVITY, _user(i), s, n) for i, (s, n) in enumerate(reversed(pairs))]
    cases += [(STEADY_ACTIVITY, _user(i), (30, ["in_progress"]), (30, False)) for i in range(20)]
    return cases


def _seed(engine) -> None:
    cases = _cases()
    users = sorted({user for _, user, _, _ in cases} | {FORGOTTEN})
    with engine.begin() as connection:
        connection.execute(
            User.__table__.insert(),
            [
                {"id": u, "email": None, "forgotten": u == FORGOTTEN}
                | {"created_at": EARLIER, "updated_at": EARLIER}
                for u in users
            ],
        )
        connection.execute(
            Activity.__table__.insert(),
            [
                {
                    "id": a,
                    "future_learn_course_uuid": c,
                    "credit": 10.0,
                    "category": "online",
                    "created_at": EARLIER,
                    "updated_at": EARLIER,
                }
                for a, c in COURSES.items()
            ],
        )
        connection.execute(
            Programme.__table__.insert(),
            [{"id": CSA, "slug": "cs-accelerator", "created_at": EARLIER, "updated_at": EARLIER}],
        )
        connection.execute(
            ProgrammeActivity.__table__.insert(),
            [
                {
                    "id": "f2f2f2f2-0000-4000-8000-000000000001",
                    "programme_id": CSA,
                    "activity_id": CSA_ACTIVITY,
                    "created_at": EARLIER,
                    "updated_at": EARLIER,
                }
            ],
        )
        achievements, transitions = [], []
        for n, (activity, user, stored, _) in enumerate(cases):
            if stored is None:
                continue
            achievement_id = f"b0b0b0b0-0000-4000-8000-{n:012d}"
            achievements.append(
                {
                    "id": achievement_id,
                    "user_id": user,
                    "activity_id": activity,
                    "programme_id": CSA if activity == CSA_ACTIVITY else None,
                    "progress": stored[0],
                    "created_at": EARLIER,
                    "updated_at": EARLIER,
                }
            )
            for k, state in enumerate(stored[1], start=1):
                transitions.append(
                    {
                        "achievement_id": achievement_id,
                        "to_state": state,
                        "sort_key": 10 * k,
                        "most_recent": k == len(stored[1]),
                        "metadata": {},
                        "created_at": EARLIER,
                        "updated_at": EARLIER,
                    }
                )
        connection.execute(Achievement.__table__.insert(), achievements)
        connection.execute(AchievementTransition.__table__.insert(), transitions)


def _latest(cases=None) -> LatestEnrolmentSet:
    cases = _cases() if cases is None else cases
    rows = [
        (user, COURSES[activity], activity, RUN, user, EARLIER, EARLIER if deactivated else None)
        for activity, user, _, (new, deactivated) in cases
    ]
    rows.append((FORGOTTEN, COURSES[PLAIN_ACTIVITY], PLAIN_ACTIVITY, RUN, FORGOTTEN, EARLIER, None))
    ratios = [new / 100 for _, _, _, (new, _) in cases] + [0.5]
    return LatestEnrolmentSet(
        latest=pd.DataFrame(rows, columns=LATEST_COLUMNS[:-2]).assign(
            deactivated_at=lambda f: pd.to_datetime(f["deactivated_at"], utc=True),
            steps_completed_ratio=ratios,
            progress=[round(r * 100) for r in ratios],
        ),
        skipped_courses=pd.DataFrame(columns=["course_uuid", "reason"]),
        unlinked_enrolments=0,
    )


def _stored(engine) -> pd.DataFrame:
    """activity_id, user_id, progress, state, most_recent count, greatest sort_key."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT a.activity_id, a.user_id, a.progress,"
                " COALESCE((SELECT t.to_state FROM achievement_transitions t"
                "   WHERE t.achievement_id = a.id AND t.most_recent), 'enrolled'),"
                " (SELECT COUNT(*) FROM achievement_transitions t"
                "   WHERE t.achievement_id = a.id AND t.most_recent),"
                " COALESCE((SELECT MAX(t.sort_key) FROM achievement_transitions t"
                "   WHERE t.achievement_id = a.id), 0)"
                " FROM achievements a"
            )
        ).all()
    frame = pd.DataFrame(
        rows,
        columns=["activity_id", "user_id", "progress", "state", "most_recent", "last_sort_key"],
    )
    return frame.astype({"activity_id": str, "user_id": str}).set_index(["activity_id", "user_id"])


def _run(repository, *, dry_run=False, latest=None, plan=None):
    return update_achievement_progress(
        repository,
        latest or _latest(),
        dagster_run_id="run-1",
        globalid_app="tc",
        now=NOW,
        dry_run=dry_run,
        plan=plan,
    )


@contextmanager
def _write_transactions(engine):
    """Counts the transactions that may write (every one not opened read-only), and the
    statements that lock rows (SELECT ... FOR UPDATE), on the real engine."""
    seen = {"write_transactions": 0, "for_update": 0}

    def begin(connection):
        if not connection.get_execution_options().get(READ_ONLY):
            seen["write_transactions"] += 1

    def statement(_connection, _cursor, sql, *_args):
        seen["for_update"] += "FOR UPDATE" in sql

    event.listen(engine, "begin", begin)
    event.listen(engine, "before_cursor_execute", statement)
    try:
        yield seen
    finally:
        event.remove(engine, "begin", begin)
        event.remove(engine, "before_cursor_execute", statement)


def test_the_set_based_pass_writes_what_the_row_by_row_rule_gives(engine):
    _seed(engine)
    repository = TeachComputingRepository(engine)
    counts = _run(repository)

    stored = _stored(engine)
    tally = {"created": 0, "unchanged": 0, "skipped_complete": 0}
    for activity, user, before, (new, deactivated) in _cases():
        progress, history = before if before is not None else (0, [])
        state = State(history[-1]) if history else State.ENROLLED
        row = stored.loc[(activity, user)]
        assert row["most_recent"] == (1 if row["last_sort_key"] else 0), (activity, user)
        if before is None:
            tally["created"] += 1
        if state is State.COMPLETE:  # never changed
            tally["skipped_complete"] += 1
            assert (row["progress"], row["state"]) == (progress, "complete")
            continue
        outcome = next_achievement(progress, state, new, deactivated)
        tally["unchanged"] += outcome.progress == progress and not outcome.moved
        assert (row["progress"], row["state"]) == (outcome.progress, str(outcome.state)), (
            activity,
            user,
            before,
            (new, deactivated),
        )
        assert row["last_sort_key"] == 10 * (len(history) + outcome.moved)
    assert FORGOTTEN not in set(stored.index.get_level_values("user_id"))
    assert len(stored) == len(_cases())
    assert counts.achievements_created == tally["created"]
    assert counts.unchanged == tally["unchanged"]
    assert counts.skipped_complete == tally["skipped_complete"]
    assert counts.skipped_forgotten == 1
    assert counts.courses_applied == len(COURSES)
    assert counts.never_decreased


def test_a_steady_night_opens_no_course_transaction(engine):
    _seed(engine)
    repository = TeachComputingRepository(engine)
    with _write_transactions(engine) as first:
        _run(repository)
    # The steady course had nothing to write: two courses, two transactions.
    assert first["write_transactions"] == 2
    before = _stored(engine)
    with _write_transactions(engine) as steady:
        counts = _run(repository)
    assert steady == {"write_transactions": 0, "for_update": 0}
    assert counts.courses_applied == len(COURSES)
    assert counts.achievements_created == counts.achievements_progressed == 0
    assert counts.unchanged + counts.skipped_complete == len(_cases())
    pd.testing.assert_frame_equal(_stored(engine), before)

    # One learner moves on in the steady course: that course alone opens a transaction.
    cases = [
        (a, u, s, (50, False) if (a, u) == (STEADY_ACTIVITY, _user(0)) else n)
        for a, u, s, n in _cases()
    ]
    with _write_transactions(engine) as one:
        counts = _run(repository, latest=_latest(cases))
    assert one["write_transactions"] == 1
    assert counts.achievements_progressed == 1
    assert counts.unchanged + counts.skipped_complete == len(_cases()) - 1


def test_a_dry_run_locks_nothing_and_plans_what_the_night_then_writes(engine):
    _seed(engine)
    repository = TeachComputingRepository(engine)
    dry = NightPlan()
    with _write_transactions(engine) as seen:
        dry_counts = _run(repository, dry_run=True, plan=dry)
    assert seen == {"write_transactions": 0, "for_update": 0}
    real = NightPlan()
    real_counts = _run(repository, plan=real)
    assert sorted(dry.json_lines()) == sorted(real.json_lines())
    assert dry.counts()["job"] > 0 and dry.counts()["transition"] > 0
    for name in ("achievements_created", "unchanged", "skipped_complete", "follow_up_jobs"):
        assert getattr(dry_counts, name) == getattr(real_counts, name), name


class WebsiteMeanwhile(TeachComputingRepository):
    """A repository whose first course transaction starts only after ``website`` has
    committed a change through a connection of its own: the website acting between the
    night's one read and its transaction."""

    def __init__(self, engine, website):
        super().__init__(engine)
        self.website = website
        self.order: list[str] = []

    def achievements_of_courses(self, activity_ids):
        self.order.append("read")
        return super().achievements_of_courses(activity_ids)

    @contextmanager
    def course_transaction(self, activity_id):
        if "website" not in self.order:
            self.website()
            self.order.append("website")
        self.order.append(activity_id)
        with super().course_transaction(activity_id) as course:
            yield course


def test_a_change_the_website_made_after_the_read_is_respected(engine):
    _seed(engine)
    # On the CS Accelerator course, both reach 80% tonight: one was at 30% in progress (the
    # website completes it meanwhile), the other had no achievement (the website creates it).
    completed_user = _user(STORED.index((30, ["in_progress"])) * len(LATEST) + 1)
    created_user = _user(0)
    cases = [
        (a, u, s, (80, False) if a == CSA_ACTIVITY and u in (completed_user, created_user) else n)
        for a, u, s, n in _cases()
    ]
    with engine.connect() as connection:
        completed_id, stored_progress = connection.execute(
            text("SELECT id, progress FROM achievements WHERE activity_id = :a AND user_id = :u"),
            {"a": CSA_ACTIVITY, "u": completed_user},
        ).one()
        assert not connection.execute(
            text("SELECT id FROM achievements WHERE activity_id = :a AND user_id = :u"),
            {"a": CSA_ACTIVITY, "u": created_user},
        ).all()
    website_engine = make_engine(engine.url.render_as_string(hide_password=False))

    def website() -> None:
        # The website completes one achievement and creates another one, at 10%.
        with website_engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE achievement_transitions SET most_recent = false"
                    " WHERE achievement_id = :id"
                ),
                {"id": completed_id},
            )
            connection.execute(
                AchievementTransition.__table__.insert(),
                {
                    "achievement_id": completed_id,
                    "to_state": "complete",
                    "sort_key": 100,
                    "most_recent": True,
                    "metadata": {"source": "website"},
                    "created_at": EARLIER,
                    "updated_at": EARLIER,
                },
            )
            connection.execute(
                Achievement.__table__.insert(),
                {
                    "id": "b1b1b1b1-0000-4000-8000-000000000001",
                    "user_id": created_user,
                    "activity_id": CSA_ACTIVITY,
                    "programme_id": CSA,
                    "progress": 10,
                    "created_at": EARLIER,
                    "updated_at": EARLIER,
                },
            )

    repository = WebsiteMeanwhile(engine, website)
    try:
        counts = _run(repository, latest=_latest(cases))
    finally:
        website_engine.dispose()
    assert repository.order[:3] == ["read", "website", CSA_ACTIVITY]
    stored = _stored(engine)
    # Completed by the website: not moved again, its progress as the website left it.
    done = stored.loc[(CSA_ACTIVITY, completed_user)]
    assert (done["progress"], done["state"], done["last_sort_key"]) == (
        stored_progress,
        "complete",
        100,
    )
    # Created by the website: not created twice, and moved on from what the website wrote.
    made = stored.loc[(CSA_ACTIVITY, created_user)]
    assert (made["progress"], made["state"], made["last_sort_key"]) == (80, "complete", 10)
    with engine.connect() as connection:
        jobs = connection.execute(
            text("SELECT achievement_id FROM partners_dagster_outbox WHERE achievement_id = :id"),
            {"id": completed_id},
        ).all()
        assert jobs == []  # no completion jobs for the website's completion
    # Counted as the night found it, not as the one read saw it.
    after = _run(TeachComputingRepository(engine), dry_run=True, latest=_latest(cases))
    assert after.achievements_created == after.achievements_progressed == 0
    assert counts.achievements_created == sum(s is None for _, _, s, _ in _cases()) - 1
