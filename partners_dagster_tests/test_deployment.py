"""The production shape, end to end: a gRPC code server, dagster-webserver and
dagster-daemon as three real processes on loopback (the compose topology), this repository's
dagster.yaml on real PostgreSQL, the sandbox API, both jobs launched through Dagster's GraphQL
client and the run queue, then one asset re-materialized alone in a new run process."""

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
from .postgres_server import drop_database

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
        drop_database(connection, name)
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


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 180
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(1)


def _wait_for_run(client, run_id: str, daemon: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 300
    while (status := client.get_run_status(run_id)) not in (
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
    ):
        assert time.monotonic() < deadline, f"run {run_id} stuck in {status}"
        assert daemon.poll() is None, log.read_text()[-3000:]
        time.sleep(1)
    assert status == dg.DagsterRunStatus.SUCCESS, log.read_text()[-3000:]


def _materialization(instance, run_id: str, asset: str):
    (event,) = [
        event
        for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if event.asset_materialization.asset_key == dg.AssetKey(asset)
    ]
    return event


def test_code_server_webserver_and_daemon_run_both_nights_and_one_asset_alone(
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
    port, grpc_port = _free_port(), _free_port()
    # The webserver and daemon load no code: they reach it through the code server.
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {grpc_port}\n      location_name: partners_dagster\n"
    )
    code_server = _start(
        [
            str(BIN / "dagster"),
            "code-server",
            "start",
            "-m",
            "partners_dagster.definitions",
            "--location-name",
            "partners_dagster",
            "-h",
            "127.0.0.1",
            "-p",
            str(grpc_port),
        ],
        env,
        tmp_path / "code-server.log",
    )
    _wait_for_port(grpc_port, code_server, tmp_path / "code-server.log", "the code server")
    webserver = _start(
        [
            str(BIN / "dagster-webserver"),
            "-w",
            str(workspace),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env,
        tmp_path / "webserver.log",
    )
    daemon = _start(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env, tmp_path / "daemon.log"
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
            run_ids[job] = client.submit_job_execution(job)
            _wait_for_run(client, run_ids[job], daemon, tmp_path / "daemon.log")
        # One asset alone, as an operator re-materializes it from the UI: a new run process
        # with none of its upstream values in memory rebuilds them through the cache and the
        # database, and nothing is pickled to disk.
        alone = client.submit_job_execution(
            "update_progress_job", asset_selection=[dg.AssetKey("latest_enrolments")]
        )
        _wait_for_run(client, alone, daemon, tmp_path / "daemon.log")
        # The operator controls, launched with run config as the Launchpad launches them.
        achievement = night.query(
            "SELECT a.user_id, v.future_learn_course_uuid AS course FROM achievements a "
            "JOIN activities v ON v.id = a.activity_id LIMIT 1"
        )
        controls = {
            "dry_run": {"dry_run": True},
            "scoped": {
                "users": [str(achievement.at[0, "user_id"])],
                "courses": [str(achievement.at[0, "course"])],
            },
            "refetch": {"refetch": True},
        }
        control_runs = {}
        for name, options in controls.items():
            control_runs[name] = client.submit_job_execution(
                "update_progress_job",
                run_config={"resources": {"run_options": {"config": options}}},
            )
            _wait_for_run(client, control_runs[name], daemon, tmp_path / "daemon.log")

        schedules = _graphql(
            port,
            """{ schedulesOrError(repositorySelector: {repositoryLocationName: "partners_dagster",
                 repositoryName: "__repository__"}) { ... on Schedules { results {
                 name cronSchedule executionTimezone } } } }""",
        )["schedulesOrError"]["results"]
        assert {(s["name"], s["cronSchedule"], s["executionTimezone"]) for s in schedules} == {
            ("update_memberships_schedule", "0 2 * * *", "Europe/London"),
            # Its real window, 02:30-05:45, as a list of crons (GraphQL shows the list).
            ("update_progress_schedule", "['30,45 2 * * *', '*/15 3-5 * * *']", "Europe/London"),
        }
        runs = _graphql(
            port,
            """{ runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }""",
        )["runsOrError"]["results"]
        # The daemon's freshness sensor may have launched a check-only run of its own.
        runs = [
            r
            for r in runs
            if r["jobName"] != "__ASSET_JOB" and r["runId"] not in control_runs.values()
        ]
        assert sorted((r["jobName"], r["status"]) for r in runs) == [
            ("update_memberships_job", "SUCCESS"),
            ("update_progress_job", "SUCCESS"),
            ("update_progress_job", "SUCCESS"),
        ]
        for run in runs:  # both carry the tag the run queue limits to one at a time
            assert {"key": "partners_dagster/partners_api", "value": "futurelearn"} in run["tags"]
    finally:
        _stop(daemon)
        _stop(webserver)
        _stop(code_server)

    # Read the materializations back from Dagster's PostgreSQL storage.
    previous = os.environ.copy()
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_")})
    try:
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            links = instance.get_latest_materialization_event(dg.AssetKey("membership_links"))
            progress = _materialization(
                instance, run_ids["update_progress_job"], "achievement_progress"
            )
            latest = _materialization(instance, alone, "latest_enrolments")
            control_progress = {
                name: _materialization(instance, run_id, "achievement_progress")
                .asset_materialization.metadata["dry_run"]
                .value
                for name, run_id in control_runs.items()
            }
            control_scope = {
                name: _materialization(instance, run_id, "course_runs")
                .asset_materialization.metadata["scope"]
                .value
                for name, run_id in control_runs.items()
            }
    finally:
        os.environ.clear()
        os.environ.update(previous)
    assert control_progress == {"dry_run": True, "scoped": False, "refetch": False}
    assert control_scope["scoped"] == "1 course(s), 1 user(s)"
    assert control_scope["refetch"] == control_scope["dry_run"] == "every course and user"
    assert links.run_id == run_ids["update_memberships_job"]
    assert links.asset_materialization.metadata["memberships_linked"].value > 0
    assert progress.run_id == run_ids["update_progress_job"]
    assert latest.run_id == alone
    assert latest.asset_materialization.metadata["latest_enrolments"].value > 0
    # No asset value was pickled under DAGSTER_HOME (only compute and sensor logs are there),
    # and no learner's email is anywhere in it.
    stored = [p for p in home.rglob("*") if p.is_file()]
    assets = {"course_runs", "course_enrolments", "organisation_memberships", "latest_enrolments"}
    assert stored and not [p for p in stored if p.name in assets]
    emails = {e.lower() for e in tiny_dataset.users["email"].dropna()}
    text_at_rest = b"".join(p.read_bytes() for p in stored).decode(errors="replace").lower()
    assert not [e for e in emails if e in text_at_rest]
    assert progress.asset_materialization.metadata["achievements_created"].value > 0
    stored = night.query("SELECT count(*) AS n FROM achievements")["n"].iat[0]
    night.close()
    assert stored == progress.asset_materialization.metadata["achievements_created"].value
    assert webserver.poll() is not None and daemon.poll() is not None
    assert code_server.poll() is not None
