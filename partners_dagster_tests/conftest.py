"""Shared fixtures: a real sandbox API on loopback, real databases, real Dagster instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from partners_dagster.partners_api import PartnersApiClient
from partners_dagster.sandbox import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    Faults,
    SandboxApi,
    SandboxServer,
    generate,
)

# Hand-made Partners API answers in the recorded shape (fixtures/partners_api/README.md).
RECORDED = Path(__file__).resolve().parent / "fixtures" / "partners_api"


# Where the tests' temporary files go when TMPDIR does not say: a RAM-backed folder. Dagster's
# SQLite event log and the tests' SQLite databases commit (and fsync) on every event and
# every write; on tmpfs that costs nothing, and the suite takes about half the time.
RAM_FOLDER = Path("/dev/shm")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    import os
    import tempfile

    if "TMPDIR" in os.environ or not (RAM_FOLDER.is_dir() and os.access(RAM_FOLDER, os.W_OK)):
        return
    folder = RAM_FOLDER / f"partners-dagster-tests-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    # Subprocesses (xdist workers, `dagster job execute`, the UI) inherit it too.
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None


# The files that take longest, longest first. pytest-xdist hands whole files to the workers
# (--dist loadfile) in collection order, so starting these first keeps one worker from
# ending the run alone on a long file. Order only: any file may run anywhere.
LONGEST_FILES = (
    "test_deployment.py",
    "test_reliability.py",
    "test_browser.py",
    "test_bench.py",
    "test_operator_controls.py",
    "test_membership_memory.py",
    "test_lifecycle_rules.py",
    "test_shared_cache.py",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: the order inside a file, and of the others, stays


def pytest_sessionstart(session):
    """In CI, the real systems the tests talk to must be there: a skip would hide them."""
    import os
    import shutil

    if os.environ.get("CI"):
        missing = [
            name for name in ("redis-server", "ruby", "chromium") if shutil.which(name) is None
        ]
        if missing:
            pytest.exit(
                f"CI must provide {', '.join(missing)}: run scripts/install_test_services.sh",
                returncode=1,
            )


@pytest.fixture(scope="session")
def tiny_dataset():
    return generate("tiny", seed=7)


@pytest.fixture(scope="session")
def sandbox_server(tiny_dataset):
    with SandboxServer(SandboxApi(tiny_dataset)) as server:
        yield server


def cleared(server):
    """``server`` with no faults and zeroed request counts for one test, its faults cleared
    again after it (the body of every ``sandbox`` fixture)."""
    api = server.api
    api.faults = Faults()
    api.requests.clear()
    api.responses.clear()
    yield server
    api.faults = Faults()


@pytest.fixture
def sandbox(sandbox_server):
    """The tiny sandbox with no faults and zeroed request counts, for one test."""
    yield from cleared(sandbox_server)


@pytest.fixture
def make_client(sandbox, tmp_path):
    clients = []

    def make(**kwargs) -> PartnersApiClient:
        options = {
            "cache": str(tmp_path / "cache.sqlite3"),
            "backoff_initial": 0.01,
            "backoff_max": 0.05,
            "read_timeout": 5.0,
        }
        options.update(kwargs)
        key = options.pop("consumer_key", DEFAULT_CONSUMER_KEY)
        secret = options.pop("consumer_secret", DEFAULT_CONSUMER_SECRET)
        client = PartnersApiClient(sandbox.url, key, secret, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def night(tiny_dataset, tmp_path):
    """Both nightly jobs on the tiny sandbox, a fresh SQLite database and Dagster instance."""
    from .harness import Night

    night = Night(tiny_dataset, tmp_path)
    yield night
    night.close()


# -- databases -------------------------------------------------------------------------------

POSTGRES_ENV = "PARTNERS_DAGSTER_TEST_POSTGRES_URL"
# PARTNERS_DAGSTER_TEST_POSTGRES_URL when set, else a throwaway cluster from the installed
# PostgreSQL server binaries; skips (fails in CI) only when there are none.
from .postgres_server import postgres_server_url  # noqa: E402,F401


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request, tmp_path):
    """An empty database on each backend, one per test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'teachcomputing.sqlite3'}"
    url = request.getfixturevalue("postgres_server_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def database_url(empty_database_url):
    """An empty database on each backend with the website's tables and ours."""
    from partners_dagster.teachcomputing.engine import make_engine
    from partners_dagster.teachcomputing.migrate import upgrade
    from partners_dagster.teachcomputing.schema import create_teachcomputing_tables

    engine = make_engine(empty_database_url)
    create_teachcomputing_tables(engine)
    upgrade(engine)
    engine.dispose()
    return empty_database_url


@pytest.fixture
def engine(database_url):
    from partners_dagster.teachcomputing.engine import make_engine

    engine = make_engine(database_url)
    yield engine
    engine.dispose()
