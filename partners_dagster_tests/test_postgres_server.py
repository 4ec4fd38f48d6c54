"""The tests' PostgreSQL: a throwaway cluster when no server is named, and the Rails-made tables."""

from __future__ import annotations

import os
import stat
import uuid

import pytest
from sqlalchemy import URL, create_engine, make_url, text
from sqlalchemy.exc import IntegrityError, OperationalError

from .postgres_server import (
    POSTGRES_URL_ENV,
    SERVER_BINARIES,
    ThrowawayPostgres,
    find_server_bindir,
    postgres_for_session,
    postgres_for_tests,
    rails_database,
)

RAILS_TABLES = {
    "users",
    "activities",
    "programmes",
    "programme_activities",
    "user_programme_enrolments",
    "user_programme_enrolment_transitions",
    "achievements",
    "achievement_transitions",
}

# Every column of the eight tables in schema.rb's order (ed34645063b4), id first as Rails makes it.
RAILS_COLUMNS = {
    "achievement_transitions": [
        "id", "to_state", "metadata", "sort_key", "achievement_id", "most_recent",
        "created_at", "updated_at",
    ],
    "achievements": [
        "id", "user_id", "activity_id", "created_at", "updated_at", "programme_id", "progress",
    ],
    "activities": [
        "id", "title", "credit", "created_at", "updated_at", "slug", "category",
        "stem_course_template_no", "self_certifiable", "provider", "future_learn_course_uuid",
        "description", "self_verification_info", "uploadable", "stem_activity_code",
        "remote_delivered_cpd", "always_on", "booking_programme_slug", "retired",
    ],
    "programme_activities": [
        "id", "programme_id", "activity_id", "created_at", "updated_at",
        "programme_activity_grouping_id", "order",
    ],
    "programmes": [
        "id", "title", "slug", "description", "created_at", "updated_at", "enrollable", "type",
    ],
    "user_programme_enrolment_transitions": [
        "id", "to_state", "metadata", "sort_key", "user_programme_enrolment_id", "most_recent",
        "created_at", "updated_at",
    ],
    "user_programme_enrolments": [
        "id", "user_id", "programme_id", "created_at", "updated_at", "flagged", "auto_enrolled",
        "pathway_id", "completed_pathway_id",
    ],
    "users": [
        "id", "first_name", "last_name", "email", "last_sign_in_at", "stem_user_id",
        "stem_achiever_contact_no", "stem_credentials_expires_at", "created_at", "updated_at",
        "encrypted_stem_credentials_access_token", "encrypted_stem_credentials_access_token_iv",
        "encrypted_stem_credentials_refresh_token",
        "encrypted_stem_credentials_refresh_token_iv", "teacher_reference_number",
        "stem_achiever_organisation_no", "future_learn_organisation_memberships", "forgotten",
    ],
}  # fmt: skip

# (table, column) -> (data_type, udt_name, is_nullable, column_default) for the columns the
# jobs use, as information_schema reports what Rails 6.1 made.
RAILS_TYPES = {
    ("users", "id"): ("uuid", "uuid", "NO", "gen_random_uuid()"),
    ("users", "email"): ("character varying", "varchar", "YES", None),
    ("users", "future_learn_organisation_memberships"): ("ARRAY", "_text", "YES", "'{}'::text[]"),
    ("users", "forgotten"): ("boolean", "bool", "YES", "false"),
    ("activities", "title"): ("character varying", "varchar", "YES", None),
    ("activities", "credit"): ("double precision", "float8", "YES", None),
    ("activities", "category"): ("character varying", "varchar", "YES", None),
    ("activities", "future_learn_course_uuid"): ("character varying", "varchar", "YES", None),
    ("programmes", "slug"): ("character varying", "varchar", "YES", None),
    ("programmes", "type"): ("character varying", "varchar", "YES", None),
    ("programme_activities", "programme_id"): ("uuid", "uuid", "NO", None),
    ("programme_activities", "activity_id"): ("uuid", "uuid", "NO", None),
    ("user_programme_enrolments", "user_id"): ("uuid", "uuid", "NO", None),
    ("user_programme_enrolments", "programme_id"): ("uuid", "uuid", "NO", None),
    ("achievements", "user_id"): ("uuid", "uuid", "NO", None),
    ("achievements", "activity_id"): ("uuid", "uuid", "NO", None),
    ("achievements", "programme_id"): ("uuid", "uuid", "YES", None),
    ("achievements", "progress"): ("integer", "int4", "NO", "0"),
    ("achievement_transitions", "id"): (
        "bigint", "int8", "NO", "nextval('achievement_transitions_id_seq'::regclass)",
    ),
    ("achievement_transitions", "to_state"): ("character varying", "varchar", "NO", None),
    ("achievement_transitions", "metadata"): ("json", "json", "YES", "'{}'::json"),
    ("achievement_transitions", "sort_key"): ("integer", "int4", "NO", None),
    ("achievement_transitions", "achievement_id"): ("uuid", "uuid", "NO", None),
    ("achievement_transitions", "most_recent"): ("boolean", "bool", "NO", None),
    ("user_programme_enrolment_transitions", "id"): (
        "bigint", "int8", "NO",
        "nextval('user_programme_enrolment_transitions_id_seq'::regclass)",
    ),
    ("user_programme_enrolment_transitions", "to_state"): (
        "character varying", "varchar", "NO", None,
    ),
    ("user_programme_enrolment_transitions", "metadata"): ("json", "json", "YES", "'{}'::json"),
    ("user_programme_enrolment_transitions", "most_recent"): ("boolean", "bool", "NO", None),
}  # fmt: skip

RAILS_UNIQUE_INDEXES = {
    "index_achievement_transitions_parent_most_recent",
    "index_achievement_transitions_parent_sort",
    "index_achievements_on_activity_id_and_user_id",
    "index_activities_on_future_learn_course_uuid",
    "index_activities_on_stem_course_template_no",
    "index_programmes_on_slug",
    "index_user_programme_enrolment_transitions_parent_most_recent",
    "index_user_programme_enrolment_transitions_parent_sort",
    "unique_programme_per_user",
    "index_users_on_stem_user_id",
    "index_users_on_teacher_reference_number",
}
RAILS_PLAIN_INDEXES = {
    "index_achievements_on_programme_id_and_user_id",
    "index_activities_on_category",
    "index_activities_on_self_certifiable",
    "index_programme_activities_on_activity_id",
    "index_programme_activities_on_programme_id",
    "index_user_programme_enrolments_on_pathway_id",
    "index_user_programme_enrolments_on_programme_id",
    "index_user_programme_enrolments_on_user_id",
}


def _server_bindir_or_skip():
    bindir = find_server_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries on this machine to start a throwaway cluster")
    return bindir


@pytest.fixture(scope="module")
def throwaway():
    """A throwaway cluster started as if PARTNERS_DAGSTER_TEST_POSTGRES_URL were unset."""
    _server_bindir_or_skip()
    with postgres_for_tests(environ={}) as url:
        yield url


@pytest.fixture(scope="module")
def server_url(request):
    """The server the suite uses: the one the variable names, else the throwaway cluster."""
    if os.environ.get(POSTGRES_URL_ENV):
        return os.environ[POSTGRES_URL_ENV]
    return request.getfixturevalue("throwaway")


@pytest.fixture
def rails_url(server_url):
    with rails_database(server_url, name=f"partners_rails_{uuid.uuid4().hex[:12]}") as url:
        yield url


def _query(url: str, sql: str, **params) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


# -- the throwaway cluster ---------------------------------------------------------------------


def test_throwaway_cluster_gives_a_working_database_when_the_url_variable_is_unset(throwaway):
    url = make_url(throwaway)
    assert url.host == "127.0.0.1"
    assert url.database == "partners_test"
    engine = create_engine(throwaway)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE probe (id integer PRIMARY KEY, word text)"))
            connection.execute(
                text("INSERT INTO probe VALUES (:id, :word)"),
                [{"id": 1, "word": "one"}, {"id": 2, "word": "two"}],
            )
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id, word FROM probe ORDER BY id")).all()
            server_version = connection.execute(text("SHOW server_version_num")).scalar_one()
        assert [tuple(row) for row in rows] == [(1, "one"), (2, "two")]
        assert int(server_version) >= 140000
    finally:
        engine.dispose()


def test_throwaway_cluster_listens_on_loopback_only_and_asks_for_a_password(throwaway):
    assert _query(throwaway, "SELECT current_setting('listen_addresses')") == [("127.0.0.1",)]
    url = make_url(throwaway)
    assert url.username == "postgres"
    assert url.password and len(url.password) >= 32
    # URL.set() cannot remove a password: build the password-less URL afresh
    no_password = URL.create(
        url.drivername, username=url.username, host=url.host, port=url.port, database=url.database
    )
    for wrong in (no_password, url.set(password="not-the-password")):
        engine = create_engine(wrong, connect_args={"connect_timeout": 5})
        try:
            with pytest.raises(OperationalError, match="password"), engine.connect():
                pass
        finally:
            engine.dispose()


def test_throwaway_server_runs_unprivileged_even_as_root_and_is_deleted_on_exit():
    bindir = _server_bindir_or_skip()
    with ThrowawayPostgres(bindir, dbname="partners_owner_probe") as server:
        url, workdir = server.url, server.workdir
        owner = os.stat(server.datadir).st_uid
        mode = stat.S_IMODE(os.stat(server.datadir).st_mode)
        assert _query(url, "SHOW data_directory") == [(str(server.datadir),)]
        if os.geteuid() == 0:
            # initdb refuses root: the server runs as an unprivileged account
            assert server.account is not None
            assert owner == server.account.pw_uid != 0
        else:
            assert server.account is None
            assert owner == os.geteuid()
        assert mode & 0o077 in (0, 0o050)  # 0700 or 0750, as initdb makes it
        assert workdir.is_dir()
    assert server.workdir is None
    assert not workdir.exists()
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with pytest.raises(OperationalError), engine.connect():
            pass
    finally:
        engine.dispose()


def test_the_url_variable_wins_and_no_server_is_started(tmp_path):
    named = "postgresql+psycopg2://someone@127.0.0.1:1/elsewhere"
    with postgres_for_tests(environ={POSTGRES_URL_ENV: named}, candidates=[tmp_path]) as url:
        assert url == named
    assert list(tmp_path.iterdir()) == []


def test_no_server_binaries_skips_and_says_why(tmp_path):
    no_server = postgres_for_tests(environ={}, candidates=[tmp_path])
    skip = pytest.raises(pytest.skip.Exception, match="no PostgreSQL server binaries")
    with skip as skipped, no_server:
        pass
    assert POSTGRES_URL_ENV in str(skipped.value)


def test_no_server_binaries_fails_on_ci_instead_of_skipping(tmp_path):
    no_server = postgres_for_tests(environ={"CI": "true"}, candidates=[tmp_path])
    with pytest.raises(pytest.fail.Exception, match="no PostgreSQL server binaries"), no_server:
        pass


def test_server_binaries_need_pg_ctl_initdb_and_postgres_in_one_folder(tmp_path):
    partial, full = tmp_path / "partial", tmp_path / "full"
    for folder, names in ((partial, ("pg_ctl", "initdb")), (full, SERVER_BINARIES)):
        folder.mkdir()
        for name in names:
            (folder / name).write_text("#!/bin/sh\n")
            (folder / name).chmod(0o755)
    assert find_server_bindir([partial]) is None
    assert find_server_bindir([partial, full]) == full


# -- the website's tables, as Rails makes them -------------------------------------------------


def test_rails_schema_creates_the_eight_tables_with_every_column_in_order(rails_url):
    rows = _query(
        rails_url,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
    )
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    assert set(columns) == RAILS_TABLES
    assert columns == RAILS_COLUMNS


def test_rails_schema_has_the_types_rails_makes_for_the_columns_the_jobs_use(rails_url):
    rows = _query(
        rails_url,
        "SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public'",
    )
    found = {(row[0], row[1]): row[2:] for row in rows}
    for key, expected in RAILS_TYPES.items():
        assert found[key] == expected, key
    # uuid primary keys default to gen_random_uuid(), on every table but the transitions
    for table in RAILS_TABLES - {"achievement_transitions", "user_programme_enrolment_transitions"}:
        assert found[(table, "id")] == ("uuid", "uuid", "NO", "gen_random_uuid()"), table


def test_rails_schema_timestamps_are_without_time_zone_keeping_microseconds(rails_url):
    rows = _query(
        rails_url,
        "SELECT c.table_name, c.column_name, c.data_type, c.datetime_precision, c.is_nullable,"
        " format_type(a.atttypid, a.atttypmod)"
        " FROM information_schema.columns c"
        " JOIN pg_attribute a ON a.attrelid = ('public.' || c.table_name)::regclass"
        "  AND a.attname = c.column_name"
        " WHERE c.table_schema = 'public' AND c.column_name IN ('created_at', 'updated_at')",
    )
    assert {row[0] for row in rows} == RAILS_TABLES
    assert len(rows) == 2 * len(RAILS_TABLES)
    for table, column, data_type, precision, nullable, formatted in rows:
        assert (data_type, precision, nullable) == ("timestamp without time zone", 6, "NO"), (
            table,
            column,
        )
        # schema.rb gives no `precision:`, so Rails 6.1 wrote a bare `timestamp`
        assert formatted == "timestamp without time zone", (table, column)


def test_rails_schema_has_rails_indexes_unique_and_partial(rails_url):
    rows = _query(
        rails_url,
        "SELECT i.relname, x.indisunique, x.indisprimary, pg_get_expr(x.indpred, x.indrelid)"
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname = 'public'",
    )
    secondary = {
        name: (unique, predicate) for name, unique, primary, predicate in rows if not primary
    }
    assert {name for name, (unique, _) in secondary.items() if unique} == RAILS_UNIQUE_INDEXES
    assert {name for name, (unique, _) in secondary.items() if not unique} == RAILS_PLAIN_INDEXES
    partial = {name: predicate for name, (_, predicate) in secondary.items() if predicate}
    assert partial == {
        "index_achievement_transitions_parent_most_recent": "most_recent",
        "index_user_programme_enrolment_transitions_parent_most_recent": "most_recent",
    }
    assert sum(1 for row in rows if row[2]) == len(RAILS_TABLES)


def test_rails_schema_has_the_foreign_keys_schema_rb_declares(rails_url):
    rows = _query(
        rails_url,
        "SELECT conname, conrelid::regclass::text, confrelid::regclass::text, confdeltype"
        " FROM pg_constraint WHERE contype = 'f' ORDER BY conname",
    )
    assert rows == [
        (
            "fk_rails_3b113ac0bf",
            "user_programme_enrolment_transitions",
            "user_programme_enrolments",
            "a",
        ),
        ("fk_rails_9a98155400", "achievement_transitions", "achievements", "c"),
    ]


def test_rails_schema_allows_one_most_recent_transition_per_achievement(rails_url):
    engine = create_engine(rails_url)
    insert = text(
        "INSERT INTO achievement_transitions"
        " (to_state, sort_key, achievement_id, most_recent, created_at, updated_at)"
        " VALUES (:state, :sort_key, :achievement_id, :most_recent, now(), now())"
    )
    try:
        with engine.begin() as connection:
            achievement_id = connection.execute(
                text(
                    "INSERT INTO achievements (user_id, activity_id, created_at, updated_at)"
                    " VALUES (gen_random_uuid(), gen_random_uuid(), now(), now()) RETURNING id"
                )
            ).scalar_one()
            row = {"achievement_id": achievement_id}
            connection.execute(
                insert, {**row, "state": "in_progress", "sort_key": 10, "most_recent": False}
            )
            connection.execute(
                insert, {**row, "state": "complete", "sort_key": 20, "most_recent": True}
            )
        second_most_recent = {**row, "state": "dropped", "sort_key": 30, "most_recent": True}
        refused = pytest.raises(IntegrityError, match="transitions_parent_most_recent")
        with refused, engine.begin() as connection:
            connection.execute(insert, second_most_recent)
        with engine.connect() as connection:
            defaults = connection.execute(
                text(
                    "SELECT a.progress, t.metadata::text FROM achievements a"
                    " JOIN achievement_transitions t ON t.achievement_id = a.id"
                    " WHERE t.most_recent"
                )
            ).all()
        assert [tuple(row) for row in defaults] == [(0, "{}")]
    finally:
        engine.dispose()


def test_each_xdist_worker_gets_a_database_of_its_own_on_a_shared_server(server_url):
    # CI names one database for every worker; the tests drop and recreate its schema.
    named = make_url(server_url).database
    with postgres_for_session(environ={POSTGRES_URL_ENV: server_url}) as url:
        assert url == server_url
    worker = {POSTGRES_URL_ENV: server_url, "PYTEST_XDIST_WORKER": "gw7"}
    with postgres_for_session(environ=worker) as url:
        assert _query(url, "SELECT current_database()") == [(f"{named}_gw7",)]
    gone = "SELECT datname FROM pg_database WHERE datname = :name"
    assert _query(server_url, gone, name=f"{named}_gw7") == []
