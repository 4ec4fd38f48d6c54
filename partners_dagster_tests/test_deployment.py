"""The production shape, end to end: dagster-webserver and dagster-daemon as real processes
on loopback, this repository's dagster.yaml on real PostgreSQL, the sandbox API, and both
jobs launched through Dagster's GraphQL client and the run queue."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .harness import Night

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dagster_database(postgres_server_url):
    """A database of its own for Dagster's storage, dropped afterwards."""
    name = f"dagster_e2e_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    yield make_url(postgres_server_url).set(database=name)
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _graphql(port: int, query: str) -> dict:
    response = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]


def test_webserver_and_daemon_run_both_nights_from_the_queue(
    tiny_dataset, tmp_path, dagster_database
):
    from dagster_graphql import DagsterGraphQLClient

    night = Night(tiny_dataset, tmp_path)
    home = tmp_path / "dagster_home"
    env = night.environment(home)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env.update(
        DAGSTER_PG_HOST=dagster_database.host,
        DAGSTER_PG_PORT=str(dagster_database.port or 5432),
        DAGSTER_PG_DB=dagster_database.database,
        DAGSTER_PG_USERNAME=dagster_database.username,
        DAGSTER_PG_PASSWORD=dagster_database.password,
    )
    port = _free_port()
    webserver = _start(
        [
            str(BIN / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env,
        tmp_path / "webserver.log",
    )
    daemon = _start(
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, tmp_path / "daemon.log"
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert webserver.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dagster-webserver did not start"
            time.sleep(1)

        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        run_ids = {}
        for job in ("update_memberships_job", "update_progress_job"):
            run_id = client.submit_job_execution(job)
            run_ids[job] = run_id
            deadline = time.monotonic() + 300
            while (status := client.get_run_status(run_id)) not in (
                dg.DagsterRunStatus.SUCCESS,
                dg.DagsterRunStatus.FAILURE,
                dg.DagsterRunStatus.CANCELED,
            ):
                assert time.monotonic() < deadline, f"{job} stuck in {status}"
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                time.sleep(1)
            assert status == dg.DagsterRunStatus.SUCCESS, (tmp_path / "daemon.log").read_text()[
                -3000:
            ]

        schedules = _graphql(
            port,
            """{ schedulesOrError(repositorySelector: {repositoryLocationName: "partners_dagster",
                 repositoryName: "__repository__"}) { ... on Schedules { results {
                 name cronSchedule executionTimezone } } } }""",
        )["schedulesOrError"]["results"]
        assert {(s["name"], s["cronSchedule"], s["executionTimezone"]) for s in schedules} == {
            ("update_memberships_schedule", "0 2 * * *", "Europe/London"),
            ("update_progress_schedule", "*/15 2-5 * * *", "Europe/London"),
        }
        runs = _graphql(
            port,
            """{ runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }""",
        )["runsOrError"]["results"]
        assert {(r["jobName"], r["status"]) for r in runs} == {
            ("update_memberships_job", "SUCCESS"),
            ("update_progress_job", "SUCCESS"),
        }
        for run in runs:  # both carry the tag the run queue limits to one at a time
            assert {"key": "partners_dagster/partners_api", "value": "futurelearn"} in run["tags"]
    finally:
        _stop(daemon)
        _stop(webserver)

    # Read the materializations back from Dagster's PostgreSQL storage.
    previous = os.environ.copy()
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_")})
    try:
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            links = instance.get_latest_materialization_event(dg.AssetKey("membership_links"))
            progress = instance.get_latest_materialization_event(
                dg.AssetKey("achievement_progress")
            )
    finally:
        os.environ.clear()
        os.environ.update(previous)
    assert links.run_id == run_ids["update_memberships_job"]
    assert links.asset_materialization.metadata["memberships_linked"].value > 0
    assert progress.run_id == run_ids["update_progress_job"]
    assert progress.asset_materialization.metadata["achievements_created"].value > 0
    stored = night.query("SELECT count(*) AS n FROM achievements")["n"].iat[0]
    night.close()
    assert stored == progress.asset_materialization.metadata["achievements_created"].value
    assert webserver.poll() is not None and daemon.poll() is not None
