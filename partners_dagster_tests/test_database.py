"""The schema, its migrations and its types on real SQLite and real PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from partners_dagster.sandbox.seed import DatabaseNotEmptyError, seed_from_dataset
from partners_dagster.settings import ConfigurationError
from partners_dagster.teachcomputing.engine import make_engine
from partners_dagster.teachcomputing.migrate import current_revision, downgrade, upgrade
from partners_dagster.teachcomputing.models import (
    Achievement,
    AchievementTransition,
    Activity,
    Base,
    PendingJob,
    User,
)

TABLES = {
    "users",
    "future_learn_organisation_memberships",
    "programmes",
    "activities",
    "programme_activities",
    "user_programme_enrolments",
    "achievements",
    "achievement_transitions",
    "pending_jobs",
}


# SQLite cannot reflect the lower(email) index, so Alembic cannot compare it there;
# test_emails_are_unique_whatever_their_case pins it on both backends instead.
@pytest.mark.filterwarnings(
    "ignore:.*expression-based index:UserWarning", "ignore::sqlalchemy.exc.SAWarning"
)
def test_models_and_migrations_agree(engine):
    with engine.connect() as connection:
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


def test_upgrade_twice_is_a_no_op_and_downgrade_base_removes_everything(engine):
    assert set(inspect(engine).get_table_names()) >= TABLES
    upgrade(engine)
    assert current_revision(engine) == "0001"
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) & TABLES == set()
    upgrade(engine)
    assert set(inspect(engine).get_table_names()) >= TABLES


def test_uuids_are_36_character_lowercase_text_or_native(engine):
    with engine.begin() as connection:
        connection.execute(
            insert(User), [{"id": "0A0B0C0D-0000-4000-8000-00000000000F", "email": "x@example.org"}]
        )
        stored = connection.execute(text("SELECT id FROM users")).scalar_one()
    if engine.dialect.name == "postgresql":
        assert str(stored) == "0a0b0c0d-0000-4000-8000-00000000000f"
        type_name = inspect(engine).get_columns("users")[0]["type"].__class__.__name__
        assert type_name == "UUID"
    else:
        assert stored == "0a0b0c0d-0000-4000-8000-00000000000f"


def test_timestamps_round_trip_as_aware_utc(engine):
    moment = datetime(2027, 3, 28, 2, 30, tzinfo=timezone(timedelta(hours=1)))
    with engine.begin() as connection:
        connection.execute(insert(User), [{"email": "t@example.org", "created_at": moment}])
        created = connection.execute(select(User.created_at)).scalar_one()
    assert created == moment and created.tzinfo is not None and created.utcoffset() == timedelta(0)


def test_naive_timestamps_are_refused(engine):
    with pytest.raises(Exception, match="timezone-aware"), engine.begin() as connection:
        connection.execute(
            insert(User), [{"email": "n@example.org", "created_at": datetime(2027, 1, 1)}]
        )


def test_emails_are_unique_whatever_their_case(engine):
    with engine.begin() as connection:
        connection.execute(insert(User), [{"email": "Jo.Smith@example.org"}])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(insert(User), [{"email": "jo.smith@EXAMPLE.org"}])


def test_one_most_recent_transition_per_achievement(engine):
    with engine.begin() as connection:
        user = connection.execute(
            insert(User).returning(User.id), [{"email": "a@example.org"}]
        ).scalar_one()
        activity = connection.execute(
            insert(Activity).returning(Activity.id), [{"title": "A"}]
        ).scalar_one()
        achievement = connection.execute(
            insert(Achievement).returning(Achievement.id),
            [{"user_id": user, "activity_id": activity}],
        ).scalar_one()
        row = {
            "achievement_id": achievement,
            "to_state": "in_progress",
            "metadata": {},
            "most_recent": True,
        }
        connection.execute(insert(AchievementTransition), [dict(row, sort_key=10)])
        connection.execute(
            insert(AchievementTransition), [dict(row, sort_key=20, most_recent=False)]
        )
        defaults = connection.execute(select(Achievement.progress, Achievement.current_state)).one()
    assert tuple(defaults) == (0, "enrolled")
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(insert(AchievementTransition), [dict(row, sort_key=30)])


def test_unique_achievement_per_user_and_activity_under_concurrent_inserts(engine):
    from partners_dagster.teachcomputing.repository import _insert

    with engine.begin() as connection:
        user = connection.execute(
            insert(User).returning(User.id), [{"email": "c@example.org"}]
        ).scalar_one()
        activity = connection.execute(
            insert(Activity).returning(Activity.id), [{"title": "C"}]
        ).scalar_one()
    errors, barrier = [], threading.Barrier(4)

    def create():
        try:
            barrier.wait()
            with engine.begin() as connection:
                statement = _insert(connection, Achievement.__table__).on_conflict_do_nothing(
                    index_elements=["user_id", "activity_id"]
                )
                connection.execute(
                    statement, [{"id": str(uuid.uuid4()), "user_id": user, "activity_id": activity}]
                )
                job = _insert(connection, PendingJob.__table__).on_conflict_do_nothing(
                    index_elements=["dedup_key"]
                )
                connection.execute(
                    job,
                    [
                        {
                            "job_class": "J",
                            "arguments": {},
                            "run_at": datetime.now(UTC),
                            "dedup_key": "k",
                        }
                    ],
                )
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM achievements")).scalar_one() == 1
        assert connection.execute(text("SELECT count(*) FROM pending_jobs")).scalar_one() == 1


def test_seed_loads_the_teach_computing_side_once(engine, tiny_dataset):
    counts = seed_from_dataset(engine, tiny_dataset)
    assert counts["users"] == len(tiny_dataset.users)
    with engine.connect() as connection:
        known = set(connection.execute(select(Activity.future_learn_course_uuid)).scalars()) - {
            None
        }
        left = connection.execute(
            text("SELECT count(*) FROM user_programme_enrolments WHERE unenrolled_at IS NOT NULL")
        ).scalar_one()
    assert known == set(tiny_dataset.known_course_uuids)
    assert left == tiny_dataset.user_programme_enrolments["unenrolled_at"].notna().sum() > 0
    with pytest.raises(DatabaseNotEmptyError):
        seed_from_dataset(engine, tiny_dataset)


@pytest.mark.parametrize("url", ["not a url", "mysql://x/y"])
def test_bad_database_urls_name_the_variable(url):
    with pytest.raises(ConfigurationError, match="TEACHCOMPUTING_DATABASE_URL"):
        make_engine(url)


def test_sqlite_has_foreign_keys_and_wal(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
