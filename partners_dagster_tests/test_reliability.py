"""Faults, interruptions, concurrent nights and bad configuration: nothing lost or doubled."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time

import pandas as pd
import pytest

from partners_dagster.partners_api.resource import PartnersApiResource
from partners_dagster.sandbox import Faults, generate
from partners_dagster.settings import ConfigurationError

from .harness import Night, materialization_metadata


@pytest.fixture(scope="module")
def small_dataset():
    return generate("small", seed=3)


@pytest.fixture(scope="module")
def reference_state(small_dataset, tmp_path_factory):
    """A fault-free, uninterrupted night on the small dataset."""
    night = Night(small_dataset, tmp_path_factory.mktemp("reference"))
    try:
        night.both_steps()
        return night.state()
    finally:
        night.close()


def assert_same_state(actual: dict, expected: dict) -> None:
    for table, frame in expected.items():
        pd.testing.assert_frame_equal(actual[table], frame, check_dtype=False, obj=table)


def test_a_night_with_20_percent_faults_ends_like_a_fault_free_night(
    small_dataset, reference_state, tmp_path
):
    # Of some 5,000 requests, none may fail for good. The client rightly gives up on a call
    # after 3 token refusals or max_attempts faults: at 3% refusals and 8 attempts, some
    # call did so about one night in seven (estimated from the rates). At 1% and 10
    # attempts, under 1%.
    night = Night(small_dataset, tmp_path, max_attempts=10, read_timeout_seconds=0.5)
    night.api.faults = Faults(
        error_rate=0.08,
        rate_limit_rate=0.05,
        retry_after_seconds=0.05,
        drop_rate=0.04,
        slow_rate=0.02,
        slow_seconds=1.0,
        token_reject_rate=0.01,
        seed=11,
    )
    try:
        memberships, progress = night.both_steps()
        state = night.state()
        faults = {k: v for k, v in night.api.responses.items() if k[1] != 200}
    finally:
        night.close()
    assert sum(faults.values()) > 500, faults  # the faults really happened
    retries = sum(
        materialization_metadata(memberships, a)["api_retries"]
        for a in ("course_runs", "course_enrolments", "organisation_memberships")
    )
    assert retries > 500
    assert materialization_metadata(memberships, "course_enrolments")["runs_failed"] == 0
    assert_same_state(state, reference_state)


def test_killing_the_progress_run_at_random_points_loses_and_doubles_nothing(
    small_dataset, reference_state, tmp_path
):
    night = Night(small_dataset, tmp_path)
    try:
        night.run("update_memberships_job")
        rng = random.Random(5)
        kills = 0
        for attempt in range(4):
            process = night.spawn("update_progress_job", tmp_path / "dagster_home")
            if attempt == 0:
                time.sleep(rng.uniform(1.0, 3.0))  # anywhere, start-up included
            else:
                _wait_for(
                    process,
                    '"achievement_progress" - STEP_START',
                    'Started execution of step "achievement_progress"',
                )
                time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside the writes
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait(timeout=60)
            process.stdout.close()
        final = night.spawn("update_progress_job", tmp_path / "dagster_home")
        output, _ = final.communicate(timeout=300)
        assert final.returncode == 0, output[-3000:]
        state = night.state()
    finally:
        night.close()
    assert kills >= 2, "the kills must land while the job runs"
    assert_same_state(state, reference_state)


def _wait_for(process, *markers: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if any(marker in line for marker in markers):
            return
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"never saw {markers[0]!r}")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_nights_at_once_still_leave_one_of_everything(
    small_dataset, reference_state, tmp_path, backend, request
):
    database_url = None
    if backend == "postgresql":
        from .conftest import _reset_postgres

        database_url = request.getfixturevalue("postgres_server_url")
        _reset_postgres(database_url)
    night = Night(small_dataset, tmp_path, database_url=database_url)
    try:
        for job in ("update_memberships_job", "update_progress_job"):
            processes = [night.spawn(job, tmp_path / f"home{i}") for i in range(2)]
            for process in processes:
                output, _ = process.communicate(timeout=300)
                errors = [line for line in output.splitlines() if "Error" in line][:10]
                assert process.returncode == 0, "\n".join(errors) + "\n...\n" + output[-2000:]
        state = night.state()
    finally:
        night.close()
    assert_same_state(state, reference_state)


def test_a_locked_database_fails_the_run_clearly_and_rolls_the_course_back(tiny_dataset, tmp_path):
    # A short busy timeout, so the lock below fails the run quickly.
    night = Night(
        tiny_dataset, tmp_path, database_url=f"sqlite:///{tmp_path / 'tc.sqlite3'}?timeout=0.5"
    )
    try:
        night.run("update_memberships_job")
        before = night.query("SELECT count(*) AS n FROM achievements")["n"].iat[0]
        # Another program holds the database's write lock (a plain sqlite3 connection).
        locker = sqlite3.connect(
            tmp_path / "tc.sqlite3", isolation_level=None, check_same_thread=False
        )
        ready, release = threading.Event(), threading.Event()

        def hold_the_lock():
            locker.execute("BEGIN EXCLUSIVE")
            ready.set()
            release.wait(30)
            locker.execute("ROLLBACK")

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        assert ready.wait(5)
        try:
            result = night.run("update_progress_job", raise_on_error=False)
        finally:
            release.set()
            holder.join()
            locker.close()
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        message = failure.step_failure_data.error.to_string()
        # The night's first write (the reports' remembered sizes) meets the lock: the run
        # fails there, naming it, before any achievement is touched.
        assert "database is locked" in message
        assert night.query("SELECT count(*) AS n FROM achievements")["n"].iat[0] == before == 0
    finally:
        night.close()


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("base_url", "", "FL_PARTNERS_URL"),
        ("consumer_key", " ", "FL_PARTNERS_CONSUMER_KEY"),
        ("consumer_secret", "", "FL_PARTNERS_CONSUMER_SECRET"),
        ("cache", "/proc/no/such/place/cache.sqlite3", "FL_PARTNERS_CACHE"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_variable(field, value, variable):
    settings = {"base_url": "http://127.0.0.1:9", "consumer_key": "k", "consumer_secret": "s" * 40}
    resource = PartnersApiResource(**{**settings, field: value})
    with pytest.raises(ConfigurationError, match=variable):
        resource.setup_for_execution(None)


def test_an_unset_variable_fails_the_run_naming_it(monkeypatch, tmp_path):
    import dagster as dg

    from partners_dagster.definitions import build_definitions

    for name in ("FL_PARTNERS_URL", "FL_PARTNERS_CONSUMER_KEY", "FL_PARTNERS_CONSUMER_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PARTNERS_DAGSTER_DATA", str(tmp_path))
    defs = build_definitions()
    with (
        dg.instance_for_test(temp_dir=str(tmp_path)) as instance,
        pytest.raises(Exception, match="FL_PARTNERS_URL"),
    ):
        defs.resolve_job_def("update_memberships_job").execute_in_process(instance=instance)
