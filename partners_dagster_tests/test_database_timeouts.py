"""The jobs' database sessions have a lock timeout and a statement timeout: a row the website
holds locked costs the night that one course (step 2) or that one user's links (step 1),
skipped and reported, and the rest go on. On the real PostgreSQL, with a second connection
holding the row lock as the website would."""

from __future__ import annotations

import contextlib
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from partners_dagster.settings import ConfigurationError, database_lock_timeout_seconds
from partners_dagster.teachcomputing.engine import is_lock_timeout, make_engine

from .conftest import _reset_postgres
from .harness import Night, Scenario, materialization_metadata

LOCK_TIMEOUT = "1"


@pytest.fixture
def postgres_url(postgres_server_url, monkeypatch):
    _reset_postgres(postgres_server_url)
    monkeypatch.setenv("TEACHCOMPUTING_DATABASE_LOCK_TIMEOUT_SECONDS", LOCK_TIMEOUT)
    return postgres_server_url


@contextlib.contextmanager
def row_locked(url: str, sql: str, **params):
    """A second session (the website's, say) that holds ``sql``'s rows FOR UPDATE until the
    block ends."""
    website = create_engine(url)
    try:
        with website.connect() as connection:
            transaction = connection.begin()
            assert connection.execute(text(sql + " FOR UPDATE"), params).all()
            try:
                yield
            finally:
                transaction.rollback()
    finally:
        website.dispose()


def _scenario() -> Scenario:
    s = Scenario()
    s.course("python")
    s.course("plain")
    s.run("python-1", "python")
    s.run("plain-1", "plain")
    for name in ("ann", "bob"):
        user = s.user(name)
        s.membership(f"{name}-m", user)
        s.enrol("python-1", f"{name}-m", "2027-01-05T10:00:00", 0.2)
        s.enrol("plain-1", f"{name}-m", "2027-01-05T10:00:00", 0.2)
    return s


def _linked(night: Night) -> set[str]:
    return set(night.repository().membership_array_entries()["membership_uuid"].astype(str))


def _progress(night: Night, s: Scenario, user: str, course: str) -> int:
    rows = night.query(
        "SELECT progress FROM achievements "
        f"WHERE user_id = '{s.id('user', user)}' AND activity_id = '{s.id('activity', course)}'"
    )
    return int(rows["progress"].iat[0])


def test_a_users_row_locked_elsewhere_skips_only_its_links_and_reports_them(postgres_url, tmp_path):
    s = _scenario()
    night = Night(s.build(), tmp_path, database_url=postgres_url, cache=False)
    try:
        ann_m, bob_m = s.id("membership", "ann-m"), s.id("membership", "bob-m")
        started = time.monotonic()
        with row_locked(
            postgres_url, "SELECT id FROM users WHERE id = :id", id=s.id("user", "ann")
        ):
            result = night.run("update_memberships_job")
        assert time.monotonic() - started < 60  # waited seconds, not as long as the lock
        assert result.success
        assert _linked(night) == {bob_m}
        metadata = materialization_metadata(result, "membership_links")
        assert metadata["memberships_linked"] == 1
        assert ann_m in metadata["links_skipped_on_lock_timeout"]
        assert "lock timeout" in metadata["links_skipped_on_lock_timeout"]
        # The lock gone, the next night links it.
        assert night.run("update_memberships_job").success
        assert _linked(night) == {ann_m, bob_m}
    finally:
        night.close()


def test_an_achievement_locked_elsewhere_skips_only_its_course_and_reports_it(
    postgres_url, tmp_path
):
    s = _scenario()
    night = Night(s.build(), tmp_path, database_url=postgres_url, cache=False)
    try:
        night.both_steps()
        assert _progress(night, s, "ann", "python") == _progress(night, s, "bob", "plain") == 20
        for name in ("ann", "bob"):
            s.enrol("python-1", f"{name}-m", "2027-02-05T10:00:00", 0.5)
            s.enrol("plain-1", f"{name}-m", "2027-02-05T10:00:00", 0.5)
        s.rebuild_enrolments(night.dataset)
        locked = night.query(
            "SELECT id FROM achievements "
            f"WHERE user_id = '{s.id('user', 'ann')}' AND activity_id = '{s.id('activity', 'python')}'"
        )["id"].iat[0]
        with row_locked(postgres_url, "SELECT id FROM achievements WHERE id = :id", id=locked):
            result = night.run("update_progress_job")
        assert result.success
        # The locked course is untouched, for every learner; the other course went on.
        assert _progress(night, s, "ann", "python") == _progress(night, s, "bob", "python") == 20
        assert _progress(night, s, "ann", "plain") == _progress(night, s, "bob", "plain") == 50
        metadata = materialization_metadata(result, "achievement_progress")
        assert metadata["courses_applied"] == 1
        assert s.id("course", "python") in metadata["courses_skipped_on_lock_timeout"]
        assert [c["course_uuid"] for c in metadata["counts"]["courses_timed_out"]] == [
            s.id("course", "python")
        ]
        # The lock gone, the next night applies it.
        assert night.run("update_progress_job").success
        assert _progress(night, s, "ann", "python") == 50
    finally:
        night.close()


def test_sessions_have_the_configured_lock_and_statement_timeouts(postgres_url):
    engine = make_engine(postgres_url, statement_timeout_seconds=0.5)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW lock_timeout")).scalar() == "1s"
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "500ms"
            with pytest.raises(OperationalError) as raised:
                connection.execute(text("SELECT pg_sleep(5)"))
            assert is_lock_timeout(raised.value)
    finally:
        engine.dispose()


def test_sqlite_waits_for_a_writer_as_long_as_the_lock_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHCOMPUTING_DATABASE_LOCK_TIMEOUT_SECONDS", "0.2")
    url = f"sqlite:///{tmp_path / 'tc.sqlite3'}"
    holder, waiter = make_engine(url), make_engine(url)
    try:
        with holder.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x)")
        with holder.begin():  # BEGIN IMMEDIATE: the write lock
            started = time.monotonic()
            with pytest.raises(OperationalError) as raised, waiter.begin():
                pass
            assert time.monotonic() - started < 10
        assert is_lock_timeout(raised.value)
    finally:
        holder.dispose()
        waiter.dispose()


def test_the_lock_timeout_setting_names_its_variable(monkeypatch):
    monkeypatch.delenv("TEACHCOMPUTING_DATABASE_LOCK_TIMEOUT_SECONDS", raising=False)
    assert database_lock_timeout_seconds() == 60.0
    monkeypatch.setenv("TEACHCOMPUTING_DATABASE_LOCK_TIMEOUT_SECONDS", "soon")
    with pytest.raises(ConfigurationError, match="TEACHCOMPUTING_DATABASE_LOCK_TIMEOUT_SECONDS"):
        database_lock_timeout_seconds()
