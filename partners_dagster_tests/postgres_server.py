"""A PostgreSQL server for the tests: the one CI names, else a throwaway cluster of our own.

`PARTNERS_DAGSTER_TEST_POSTGRES_URL`, when set, names the server (CI sets it). Otherwise the
tests start a throwaway cluster from the PostgreSQL server binaries installed on the machine,
in a temporary folder, on a free port on 127.0.0.1, and stop and delete it at the end. The
cluster is driven by pytest-postgresql's `PostgreSQLExecutor` (initdb, pg_ctl start -w,
status, stop). The tests are skipped only when no server binaries exist, and say so.

initdb and postgres refuse to run as root, and CI runs as root: as root, the server runs as
the `postgres` account (the Debian packages create it), else as `nobody`. pg_ctl is then
called through a small wrapper that drops to that account before it runs pg_ctl.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

POSTGRES_URL_ENV = "PARTNERS_DAGSTER_TEST_POSTGRES_URL"
RAILS_SCHEMA_SQL = Path(__file__).with_name("rails_schema.sql")
SERVER_BINARIES = ("pg_ctl", "initdb", "postgres")
# Accounts the server may run as when the tests run as root, in order of preference.
UNPRIVILEGED_ACCOUNTS = ("postgres", "nobody")
START_TIMEOUT_SECONDS = 60


# -- finding the server binaries ---------------------------------------------------------------


def candidate_bindirs() -> list[Path]:
    """Where PostgreSQL server binaries may be: `pg_config --bindir`, Debian's
    /usr/lib/postgresql/<version>/bin (newest first), then the folder of `pg_ctl` on PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    versioned = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        with contextlib.suppress(ValueError):
            versioned.append((float(path.parent.name), path))
    candidates.extend(path for _, path in sorted(versioned, reverse=True))
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.append(Path(pg_ctl).resolve().parent)
    return candidates


def find_server_bindir(candidates: Iterable[Path] | None = None) -> Path | None:
    """The first folder holding all of pg_ctl, initdb and postgres as executables, or None."""
    for folder in candidate_bindirs() if candidates is None else candidates:
        if all(os.access(folder / name, os.X_OK) for name in SERVER_BINARIES):
            return folder
    return None


def server_account() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root, or None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_ACCOUNTS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(
        "the tests run as root and PostgreSQL's initdb refuses root, but no unprivileged "
        f"account to run the throwaway server as exists (tried {', '.join(UNPRIVILEGED_ACCOUNTS)})"
    )


# -- the throwaway cluster ---------------------------------------------------------------------

_WRAPPER = """#!{python} -I
# Runs pg_ctl as {name}: initdb and postgres refuse to run as root.
import os, sys
os.setgroups([])
os.setgid({gid})
os.setuid({uid})
os.chdir({workdir!r})
os.environ["HOME"] = {workdir!r}
os.execv({pg_ctl!r}, [{pg_ctl!r}, *sys.argv[1:]])
"""


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary folder on 127.0.0.1, for one test session.

    `start()` runs initdb and starts the server on a free port of 127.0.0.1, creates the
    database `dbname` and returns its SQLAlchemy URL: superuser `postgres` with a random
    password (SCRAM over TCP; trust only on the Unix socket in the server's own 0700 folder).
    `stop()` stops the server and deletes every file it made. Also a context manager.
    Nothing is left running if `start()` fails.
    """

    def __init__(self, bindir: Path, *, dbname: str = "partners_test") -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", dbname):
            raise ValueError(f"database name {dbname!r} is not a plain lowercase identifier")
        self.bindir = Path(bindir)
        self.dbname = dbname
        self.account = server_account()
        self.workdir: Path | None = None
        self._wrapperdir: Path | None = None
        self._executor = None
        self.url: str | None = None

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None, "the server has not been started"
        return self.workdir / "data"

    def start(self) -> str:
        from port_for import get_port
        from pytest_postgresql.executors import PostgreSQLExecutor

        try:
            pg_ctl = self._prepare_folders()
            port = get_port(None)
            assert port is not None
            self._executor = PostgreSQLExecutor(
                executable=pg_ctl,
                host="127.0.0.1",
                port=port,
                datadir=str(self.datadir),
                unixsocketdir=str(self.workdir),
                logfile=str(self.workdir / "postgresql.log"),
                startparams="-w",
                dbname=self.dbname,
                user="postgres",
                timeout=START_TIMEOUT_SECONDS,
                # A throwaway cluster needs no durability: no fsync, no waiting on commits.
                postgres_options=(
                    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                    "-c full_page_writes=off"
                ),
            )
            try:
                self._executor.init_directory()
                # Password (SCRAM) over TCP, trust only on the socket in our private folder.
                (self.datadir / "pg_hba.conf").write_text(
                    "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
                )
                self._executor.start()
                # The executor returns once the port accepts connections, which is before
                # the server is ready ("the database system is starting up"). `pg_ctl start
                # -w` exits, with 0, only when it is ready: wait for that.
                launcher = self._executor.process
                if launcher is not None:
                    code = launcher.wait(timeout=START_TIMEOUT_SECONDS)
                    if code != 0:
                        raise RuntimeError(f"pg_ctl start exited with {code}")
            except subprocess.CalledProcessError as error:
                output = (error.output or b"").decode("utf-8", "replace").strip()
                raise RuntimeError(self._describe_failure(f"initdb failed: {output}")) from error
            except Exception as error:
                raise RuntimeError(
                    self._describe_failure(f"{type(error).__name__}: {error}")
                ) from error
            password = secrets.token_hex(16)
            self._create_database(port, password)
            self.url = f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port}/{self.dbname}"
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        executor, self._executor = self._executor, None
        try:
            if executor is not None and executor.running():
                executor.stop()
        finally:
            for folder in (self.workdir, self._wrapperdir):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
            self.workdir = self._wrapperdir = None

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _prepare_folders(self) -> str:
        """Makes the server's folder and returns the pg_ctl to call (a wrapper when root)."""
        pg_ctl = str(self.bindir / "pg_ctl")
        # As root, a folder that the server's account can reach: not under /root.
        parent = "/tmp" if self.account is not None and os.path.isdir("/tmp") else None
        self.workdir = Path(tempfile.mkdtemp(prefix="partners-dagster-pg-", dir=parent))
        if self.account is None:
            return pg_ctl
        os.chown(self.workdir, self.account.pw_uid, self.account.pw_gid)
        # The wrapper lives in a folder of root's own, so the server's account cannot change it.
        self._wrapperdir = Path(tempfile.mkdtemp(prefix="partners-dagster-pg-ctl-"))
        wrapper = self._wrapperdir / "pg_ctl"
        wrapper.write_text(
            _WRAPPER.format(
                python=sys.executable,
                name=self.account.pw_name,
                uid=self.account.pw_uid,
                gid=self.account.pw_gid,
                workdir=str(self.workdir),
                pg_ctl=pg_ctl,
            )
        )
        wrapper.chmod(0o700)
        return str(wrapper)

    def _describe_failure(self, what: str) -> str:
        as_whom = f" as the {self.account.pw_name!r} account" if self.account else ""
        log = ""
        if self.workdir is not None:
            with contextlib.suppress(OSError):
                tail = (self.workdir / "postgresql.log").read_text(errors="replace")[-2000:]
                log = f"\nserver log (end):\n{tail}" if tail.strip() else ""
        return (
            f"could not start a throwaway PostgreSQL from {self.bindir}{as_whom} "
            f"in {self.workdir}: {what}{log}"
        )

    def _create_database(self, port: int, password: str) -> None:
        """Sets the superuser's password and creates the database, through the socket."""
        from sqlalchemy import create_engine
        from sqlalchemy.engine import URL

        socket_url = URL.create(
            "postgresql+psycopg2",
            username="postgres",
            database="postgres",
            query={"host": str(self.workdir), "port": str(port)},
        )
        admin = create_engine(socket_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql("SET password_encryption = 'scram-sha-256'")
                # ALTER ROLE takes no bind parameters: the password is hex, so quoting is safe.
                connection.exec_driver_sql(f"ALTER ROLE postgres PASSWORD '{password}'")
                connection.exec_driver_sql(f'CREATE DATABASE "{self.dbname}"')
        finally:
            admin.dispose()


# -- what the tests use ------------------------------------------------------------------------


def no_server_message() -> str:
    return (
        f"no PostgreSQL server binaries ({', '.join(SERVER_BINARIES)}) were found in "
        "`pg_config --bindir`, /usr/lib/postgresql/*/bin or on PATH, and "
        f"{POSTGRES_URL_ENV} is not set: install the PostgreSQL server (Debian: "
        f"postgresql-15) or set {POSTGRES_URL_ENV} to a server's SQLAlchemy URL"
    )


@contextlib.contextmanager
def postgres_for_tests(
    environ: Mapping[str, str] | None = None, candidates: Iterable[Path] | None = None
) -> Iterator[str]:
    """Yields the SQLAlchemy URL of a PostgreSQL database for the tests.

    `PARTNERS_DAGSTER_TEST_POSTGRES_URL` when set; else a throwaway cluster, stopped and
    deleted on exit. With neither the variable nor server binaries: skips, saying why (fails
    instead when `CI` is set, since CI must run the PostgreSQL tests).
    """
    environ = os.environ if environ is None else environ
    url = environ.get(POSTGRES_URL_ENV)
    if url:
        yield url
        return
    bindir = find_server_bindir(candidates)
    if bindir is None:
        if environ.get("CI"):
            pytest.fail(no_server_message())
        pytest.skip(no_server_message())
    with ThrowawayPostgres(bindir) as server:
        assert server.url is not None
        yield server.url


@contextlib.contextmanager
def postgres_for_session(
    environ: Mapping[str, str] | None = None, candidates: Iterable[Path] | None = None
) -> Iterator[str]:
    """`postgres_for_tests` for one pytest session, which under pytest-xdist is one worker
    (`PYTEST_XDIST_WORKER` names it). A throwaway cluster is the worker's own already; on the
    server `PARTNERS_DAGSTER_TEST_POSTGRES_URL` names (CI's, which the workers share) each
    worker gets a fresh database of its own beside the named one, dropped on exit, since the
    tests drop and recreate the schema they use."""
    environ = os.environ if environ is None else environ
    worker = environ.get("PYTEST_XDIST_WORKER")
    with postgres_for_tests(environ, candidates) as url:
        if worker and environ.get(POSTGRES_URL_ENV):
            with fresh_database(url, worker_database_name(url, worker)) as worker_url:
                yield worker_url
        else:
            yield url


def worker_database_name(server_url: str, worker: str) -> str:
    """`partners_test` and worker `gw0` -> `partners_test_gw0`."""
    from sqlalchemy import make_url

    base = make_url(server_url).database or "postgres"
    return f"{base}_{worker}".lower()[:63]


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The URL of a PostgreSQL database for the whole test session (see `postgres_for_session`)."""
    with postgres_for_session() as url:
        yield url


@contextlib.contextmanager
def fresh_database(server_url: str, name: str) -> Iterator[str]:
    """Creates the empty database `name` beside the one `server_url` names, yields its URL,
    and drops it on exit. Needs CREATEDB (CI's role and the throwaway superuser have it)."""
    from sqlalchemy import create_engine, make_url

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database name {name!r} is not a plain lowercase identifier")
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            drop_database(connection, name)
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
            # A test database needs no durability: its commits need not wait for the disk.
            connection.exec_driver_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                drop_database(connection, name)
    finally:
        admin.dispose()


def drop_database(connection, name: str, attempts: int = 20) -> None:
    """Drops the database ``name`` (an AUTOCOMMIT ``connection`` to another one), ending the
    sessions our role holds on it first. Not ``WITH (FORCE)``: on PostgreSQL 15 that also
    tries to end an autovacuum worker busy there, which a role without pg_signal_backend may
    not, and fails; a plain DROP cancels autovacuum itself. Bounded: ``attempts`` tries,
    half a second apart, while a session is still closing."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(attempts):
        connection.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %(name)s AND usename = current_user AND pid <> pg_backend_pid()",
            {"name": name},
        )
        try:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            return
        except OperationalError as error:  # "is being accessed by other users"
            if attempt == attempts - 1 or "being accessed" not in str(error):
                raise
            time.sleep(0.5)


def load_rails_schema(database_url: str) -> None:
    """Creates the website's eight tables in the database, as Rails 6.1 does (rails_schema.sql)."""
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(RAILS_SCHEMA_SQL.read_text(encoding="utf-8"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def rails_database(server_url: str, name: str = "partners_rails") -> Iterator[str]:
    """A fresh database holding only the website's tables as Rails makes them; dropped on exit."""
    with fresh_database(server_url, name) as url:
        load_rails_schema(url)
        yield url
