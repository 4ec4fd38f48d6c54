"""The schema, its migrations and its types on real SQLite and real PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from partners_dagster.sandbox.seed import DatabaseNotEmptyError, seed_from_dataset
from partners_dagster.settings import ConfigurationError
from partners_dagster.teachcomputing.engine import make_engine
from partners_dagster.teachcomputing.migrate import (
    VERSION_TABLE,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from partners_dagster.teachcomputing.models import (
    OWN,
    Achievement,
    AchievementTransition,
    Activity,
    OutboxJob,
    User,
)
from partners_dagster.teachcomputing.repository import TeachComputingRepository
from partners_dagster.teachcomputing.schema import (
    TablesExistError,
    check_database,
    create_teachcomputing_tables,
)
from partners_dagster.tools.cli import main

WEBSITE_TABLES = {
    "users",
    "programmes",
    "activities",
    "programme_activities",
    "user_programme_enrolments",
    "user_programme_enrolment_transitions",
    "achievements",
    "achievement_transitions",
}
OWN_TABLES = {
    "partners_dagster_membership_links",
    "partners_dagster_membership_lookups",
    "partners_dagster_outbox",
    "partners_dagster_report_sizes",
}


def test_our_models_and_our_migrations_agree(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                "include_name": lambda name, kind, *_: kind != "table"
                or name.startswith("partners_dagster_"),
            },
        )
        diff = compare_metadata(context, OWN)
    assert diff == []


def test_upgrade_and_downgrade_touch_only_our_own_tables(empty_database_url):
    engine = make_engine(empty_database_url)
    try:
        create_teachcomputing_tables(engine)
        with engine.begin() as connection:
            connection.execute(insert(User), [{"email": "kept@example.org"}])
        upgrade(engine)
        upgrade(engine)  # twice is a no-op
        tables = set(inspect(engine).get_table_names())
        assert tables == WEBSITE_TABLES | OWN_TABLES | {VERSION_TABLE}
        assert current_revision(engine) == head_revision() == "0003"
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) == WEBSITE_TABLES | {VERSION_TABLE}
        with engine.connect() as connection:  # the website's rows are untouched
            assert connection.execute(select(User.email)).scalars().all() == ["kept@example.org"]
    finally:
        engine.dispose()


def test_create_teachcomputing_tables_refuses_a_database_that_has_them_and_names_one(
    empty_database_url,
):
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE achievements (id integer)")
        with pytest.raises(TablesExistError, match="'achievements'"):
            create_teachcomputing_tables(engine)
        assert set(inspect(engine).get_table_names()) == {"achievements"}  # nothing created
    finally:
        engine.dispose()
    runner = CliRunner()
    refused = runner.invoke(
        main, ["db", "--database-url", empty_database_url, "create-teachcomputing-tables"]
    )
    assert refused.exit_code != 0 and "'achievements'" in refused.output


def test_db_check_passes_on_the_tables_we_create_and_reports_our_migrations(database_url):
    result = CliRunner().invoke(main, ["db", "--database-url", database_url, "check"])
    assert result.exit_code == 0, result.output
    assert "ok      users.future_learn_organisation_memberships" in result.output
    assert "revision 0003, head 0003: current" in result.output


def test_db_check_names_a_missing_column_and_a_wrong_type_and_exits_non_zero(empty_database_url):
    engine = make_engine(empty_database_url)
    create_teachcomputing_tables(engine)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE users DROP COLUMN forgotten")
        if postgres:
            connection.exec_driver_sql("ALTER TABLE activities ALTER COLUMN credit TYPE integer")
    engine.dispose()
    result = CliRunner().invoke(main, ["db", "--database-url", empty_database_url, "check"])
    assert result.exit_code != 0
    assert "MISSING users.forgotten" in result.output
    assert "users.forgotten" in result.output.splitlines()[-1]  # the error names it
    if postgres:
        assert "WRONG   activities.credit: double precision (found integer)" in result.output
    assert "missing: run partners-dagster db upgrade" in result.output


def test_db_check_changes_nothing(database_url):
    engine = make_engine(database_url)
    try:
        before = {t: inspect(engine).get_columns(t) for t in inspect(engine).get_table_names()}
        check_database(engine)
        after = {t: inspect(engine).get_columns(t) for t in inspect(engine).get_table_names()}
    finally:
        engine.dispose()
    assert repr(before) == repr(after)


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


# PostgreSQL's uuid type has one text form: SQLite only.
@pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True)
def test_uuid_text_someone_else_wrote_in_upper_case_is_read_canonical(engine):
    # Hardening item 14: the website (or a person) wrote upper case on SQLite; it must not
    # look like a second membership or an unknown course.
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO users (id, email, future_learn_organisation_memberships, created_at, updated_at) "
            "VALUES ('ABCDEF01-0000-4000-8000-00000000000F', 'u@example.org', "
            "'[\"0A0B0C0D-0000-4000-8000-0000000000AA\"]', '2020-01-01', '2020-01-01')"
        )
        connection.exec_driver_sql(
            "INSERT INTO activities (id, future_learn_course_uuid, created_at, updated_at) "
            "VALUES ('ABCDEF02-0000-4000-8000-00000000000F', '{0A0B0C0D-0000-4000-8000-0000000000BB}', "
            "'2020-01-01', '2020-01-01')"
        )
    repository = TeachComputingRepository(engine)
    assert repository.users()["id"].tolist() == ["abcdef01-0000-4000-8000-00000000000f"]
    assert repository.linked_memberships().values.tolist() == [
        ["0a0b0c0d-0000-4000-8000-0000000000aa", "abcdef01-0000-4000-8000-00000000000f"]
    ]
    assert repository.catalogue().activities["course_uuid"].tolist() == [
        "0a0b0c0d-0000-4000-8000-0000000000bb"
    ]


# SQLite has the forms docs/database.md gives, checked by db check: PostgreSQL only.
@pytest.mark.parametrize("empty_database_url", ["postgresql"], indirect=True)
def test_website_columns_have_rails_types_on_postgresql(engine):
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT table_name || '.' || column_name, data_type, datetime_precision "
            "FROM information_schema.columns WHERE table_schema = current_schema()"
        ).all()
    types = {name: (kind, precision) for name, kind, precision in rows}
    assert types["users.future_learn_organisation_memberships"][0] == "ARRAY"
    assert types["achievement_transitions.metadata"][0] == "json"
    assert types["activities.credit"][0] == "double precision"
    assert types["activities.future_learn_course_uuid"][0] == "character varying"
    assert types["achievements.updated_at"] == ("timestamp without time zone", 6)
    assert types["partners_dagster_outbox.created_at"][0] == "timestamp with time zone"


def test_timestamps_round_trip_as_aware_utc(engine):
    # Rails's timestamp without time zone holds UTC: written as UTC, read back aware.
    moment = datetime(2027, 3, 28, 2, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    with engine.begin() as connection:
        connection.execute(insert(User), [{"email": "t@example.org", "created_at": moment}])
        created = connection.execute(select(User.created_at)).scalar_one()
        raw = connection.execute(text("SELECT created_at FROM users")).scalar_one()
    assert created == moment and created.tzinfo is not None and created.utcoffset() == timedelta(0)
    assert str(raw).startswith("2027-03-28 01:30:00.123456")


def test_naive_timestamps_are_refused(engine):
    with pytest.raises(Exception, match="timezone-aware"), engine.begin() as connection:
        connection.execute(
            insert(User), [{"email": "n@example.org", "created_at": datetime(2027, 1, 1)}]
        )


def test_two_users_may_share_an_email_as_on_the_website(engine):
    # The website has no unique index on email: matching must treat such a pair as ambiguous.
    with engine.begin() as connection:
        connection.execute(insert(User), [{"email": "Jo.Smith@example.org"}])
        connection.execute(insert(User), [{"email": " jo.smith@EXAMPLE.org"}])
        assert connection.execute(text("SELECT count(*) FROM users")).scalar_one() == 2


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
            "created_at": datetime.now(UTC),
            "updated_at": datetime.now(UTC),
        }
        connection.execute(insert(AchievementTransition), [dict(row, sort_key=10)])
        connection.execute(
            insert(AchievementTransition), [dict(row, sort_key=20, most_recent=False)]
        )
        defaults = connection.execute(select(Achievement.progress)).one()
    assert tuple(defaults) == (0,)
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
                job = _insert(connection, OutboxJob.__table__).on_conflict_do_nothing(
                    index_elements=["dedup_key"]
                )
                connection.execute(
                    job,
                    [
                        {
                            "job_class": "J",
                            "queue": "default",
                            "arguments": [],
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
        assert (
            connection.execute(text("SELECT count(*) FROM partners_dagster_outbox")).scalar_one()
            == 1
        )


def test_seed_loads_the_teach_computing_side_once(engine, tiny_dataset):
    counts = seed_from_dataset(engine, tiny_dataset)
    assert counts["users"] == len(tiny_dataset.users)
    with engine.connect() as connection:
        known = set(connection.execute(select(Activity.future_learn_course_uuid)).scalars()) - {
            None
        }
        left = connection.execute(
            text(
                "SELECT count(*) FROM user_programme_enrolment_transitions "
                "WHERE to_state = 'unenrolled' AND most_recent"
            )
        ).scalar_one()
    assert known == set(tiny_dataset.known_course_uuids)
    assert left == len(tiny_dataset.user_programme_enrolment_transitions) > 0
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


def test_db_upgrade_and_downgrade_work_on_a_url_with_a_percent_sign(tmp_path):
    # Hardening item 2: Alembic's ConfigParser choked on `%` (any encoded password).
    folder = tmp_path / "50% done"
    url = f"sqlite:///{folder / 'tc.sqlite3'}"
    runner = CliRunner()
    up = runner.invoke(main, ["db", "--database-url", url, "upgrade"])
    assert up.exit_code == 0, up.output
    assert "at revision 0003" in up.output
    down = runner.invoke(main, ["db", "--database-url", url, "downgrade", "base"])
    assert down.exit_code == 0, down.output


def test_db_upgrade_failing_on_an_encoded_password_does_not_print_it():
    url = "postgresql+psycopg2://partners:p%40ss%25word@127.0.0.1:1/nowhere"
    result = CliRunner().invoke(main, ["db", "--database-url", url, "upgrade"])
    assert result.exit_code != 0
    shown = result.output + repr(result.exception)
    assert "p%40ss%25word" not in shown and "p@ss%word" not in shown
