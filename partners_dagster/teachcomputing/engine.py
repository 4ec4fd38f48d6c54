"""Database engines: SQLite with foreign keys and WAL, PostgreSQL through a pooled engine.
Every session has a lock timeout and, on PostgreSQL, a statement timeout (settings.py)."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .. import settings
from ..settings import ConfigurationError

READ_ONLY = "partners_dagster_read_only"
# PostgreSQL's lock_not_available (lock_timeout) and query_canceled (statement_timeout).
TIMEOUT_SQLSTATES = frozenset({"55P03", "57014"})


def is_lock_timeout(error: BaseException) -> bool:
    """Whether ``error`` (a SQLAlchemy error or the driver's own) is a lock or statement
    timeout: PostgreSQL's ``lock_timeout`` or ``statement_timeout``, or SQLite's busy timeout
    ("database is locked"). Such a unit of work is skipped and reported; the rest go on."""
    original = getattr(error, "orig", None) or error
    code = getattr(original, "pgcode", None) or getattr(original, "sqlstate", None)
    if code in TIMEOUT_SQLSTATES:
        return True
    return isinstance(original, sqlite3.OperationalError) and "locked" in str(original)


def read_only(engine: Engine) -> Connection:
    """A connection for reads only: on SQLite it does not take the write lock."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def make_engine(
    url: str,
    *,
    lock_timeout_seconds: float | None = None,
    statement_timeout_seconds: float | None = None,
) -> Engine:
    """An engine for ``url``; the timeouts default to TEACHCOMPUTING_DATABASE_LOCK_TIMEOUT_SECONDS
    and TEACHCOMPUTING_DATABASE_STATEMENT_TIMEOUT_SECONDS (settings.py)."""
    if lock_timeout_seconds is None:
        lock_timeout_seconds = settings.database_lock_timeout_seconds()
    if statement_timeout_seconds is None:
        statement_timeout_seconds = settings.database_statement_timeout_seconds()
    try:
        parsed = make_url(url)
    except ArgumentError:
        # Never echo the text: a mistyped URL still holds its password.
        scheme = url.strip().split(":", 1)[0].split("/", 1)[0][:30]
        raise ConfigurationError(
            "TEACHCOMPUTING_DATABASE_URL is not a database URL "
            f"(expected dialect+driver://user:password@host/database; it begins {scheme!r})"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, lock_timeout_seconds)
    if parsed.get_backend_name() == "postgresql":
        engine = create_engine(parsed, pool_size=5, max_overflow=5, pool_pre_ping=True)
        lock_ms = max(1, round(lock_timeout_seconds * 1000))
        statement_ms = max(1, round(statement_timeout_seconds * 1000))

        @event.listens_for(engine, "connect")
        def _timeouts(dbapi_connection, _record) -> None:
            # A row the website holds locked must not stall a night, nor the rows the night
            # has written stay locked while it waits: past the timeout the statement fails,
            # and its course (or link) is skipped and reported.
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET lock_timeout = {lock_ms}")
            cursor.execute(f"SET statement_timeout = {statement_ms}")
            cursor.close()
            dbapi_connection.autocommit = autocommit

        return engine
    raise ConfigurationError(
        f"TEACHCOMPUTING_DATABASE_URL: unsupported database {parsed.get_backend_name()!r} (use sqlite or postgresql)"
    )


@functools.cache
def shared_engine(
    url: str,
    lock_timeout_seconds: float | None = None,
    statement_timeout_seconds: float | None = None,
) -> Engine:
    """One engine (and pool) per URL and timeouts per process."""
    return make_engine(
        url,
        lock_timeout_seconds=lock_timeout_seconds,
        statement_timeout_seconds=statement_timeout_seconds,
    )


def _sqlite_engine(url, lock_timeout_seconds: float) -> Engine:
    if url.database and url.database != ":memory:":
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(
                f"TEACHCOMPUTING_DATABASE_URL: cannot create {url.database!r}: {error.strerror}"
            ) from None
    # Wait for another writer up to the lock timeout (a URL's ?timeout=N overrides it).
    engine = create_engine(
        url, connect_args={} if "timeout" in url.query else {"timeout": lock_timeout_seconds}
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        # A writing transaction takes the write lock at its start, so two writers never read
        # the same state and then both write (SQLite's SELECT ... FOR UPDATE). Reads marked
        # read_only (see read_only()) start deferred and, under WAL, never wait for a writer.
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
