"""Database engines: SQLite with foreign keys and WAL, PostgreSQL through a pooled engine."""

from __future__ import annotations

import functools
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..settings import ConfigurationError

READ_ONLY = "partners_dagster_read_only"


def read_only(engine: Engine) -> Connection:
    """A connection for reads only: on SQLite it does not take the write lock."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def make_engine(url: str) -> Engine:
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
        return _sqlite_engine(parsed)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_size=5, max_overflow=5, pool_pre_ping=True)
    raise ConfigurationError(
        f"TEACHCOMPUTING_DATABASE_URL: unsupported database {parsed.get_backend_name()!r} (use sqlite or postgresql)"
    )


@functools.cache
def shared_engine(url: str) -> Engine:
    """One engine (and pool) per URL per process."""
    return make_engine(url)


def _sqlite_engine(url) -> Engine:
    if url.database and url.database != ":memory:":
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(
                f"TEACHCOMPUTING_DATABASE_URL: cannot create {url.database!r}: {error.strerror}"
            ) from None
    # Wait up to a minute for another writer (a URL's ?timeout=N overrides it).
    engine = create_engine(url, connect_args={} if "timeout" in url.query else {"timeout": 60})

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
