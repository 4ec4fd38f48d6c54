"""What the on-call operator reads in the Dagster UI (issue 24): one-line failures with their
retries logged as they happen, run-wide network and cache counts, a warning for a run that
asked the network nothing, no false "Unsynced", and the guard rails of runs launched from the
UI. Real parts: the sandbox API over HTTP, SQLite, Redis, and real Dagster instances."""

from __future__ import annotations

import socket

import dagster as dg
import pytest

from partners_dagster.definitions import build_definitions
from partners_dagster.sidekiq.resource import SidekiqResource
from partners_dagster.teachcomputing.resource import TeachComputingDatabaseResource

from .harness import Night

MEMBERSHIPS = "update_memberships_job"
PROGRESS = "update_progress_job"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step_failures(result: dg.ExecuteInProcessResult) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]


def _failure_of(result: dg.ExecuteInProcessResult):
    (event,) = _step_failures(result)
    data = event.step_failure_data
    assert data.user_failure_data is not None, data.error.to_string()
    return event.step_key, data.user_failure_data


def _warnings(night: Night, run_id: str) -> list[str]:
    return [
        entry.user_message
        for entry in night.instance.all_logs(run_id)
        if entry.level == 30 and entry.dagster_event is None  # logging.WARNING, a log line
    ]


@pytest.fixture
def night_without_cache(tiny_dataset, tmp_path):
    night = Night(tiny_dataset, tmp_path, cache=False)
    yield night
    night.close()


def test_an_unreachable_api_ends_the_step_in_one_line_and_logs_each_retry(night_without_cache):
    night = night_without_cache
    night.server.stop()
    result = night.run(MEMBERSHIPS, raise_on_error=False)
    assert not result.success
    step, failure = _failure_of(result)
    assert step == "course_runs"
    description = failure.description
    assert "\n" not in description
    assert description.startswith("Partners API course_runs: unreachable after 3 attempts.")
    assert "Last error:" in description and "FL_PARTNERS_URL" in description
    metadata = {k: v.value for k, v in failure.metadata.items()}
    assert metadata["endpoint"] == "course_runs"
    assert metadata["attempts"] == 3
    assert "FL_PARTNERS_CONSUMER_KEY" in metadata["check"]
    retries = [w for w in _warnings(night, result.run_id) if "retrying in" in w]
    assert [w.split(" failed")[0] for w in retries] == [
        "Partners API course_runs: attempt 1",
        "Partners API course_runs: attempt 2",
    ]


def test_an_unreachable_database_ends_the_step_in_one_line_without_its_password(night):
    url = f"postgresql+psycopg2://tc:hunter2secret@127.0.0.1:{_closed_port()}/teachcomputing"
    defs = build_definitions(
        {**night.resources, "teachcomputing_db": TeachComputingDatabaseResource(database_url=url)}
    )
    result = defs.resolve_job_def(MEMBERSHIPS).execute_in_process(
        instance=night.instance, raise_on_error=False
    )
    step, failure = _failure_of(result)
    assert step == "course_runs"
    assert "\n" not in failure.description
    assert failure.description.startswith("Teach Computing database unreachable.")
    assert "TEACHCOMPUTING_DATABASE_URL" in failure.description
    assert "db check" in failure.description
    shown = failure.description + repr({k: v.value for k, v in failure.metadata.items()})
    assert "hunter2secret" not in shown


def test_an_unreachable_sidekiq_redis_ends_the_step_in_one_line(night):
    assert night.run(MEMBERSHIPS).success
    redis_url = f"redis://:s3cretpass@127.0.0.1:{_closed_port()}/0"
    defs = build_definitions(
        {
            **night.resources,
            "sidekiq": SidekiqResource(redis_url=redis_url, globalid_app="teach-computing"),
        }
    )
    result = defs.resolve_job_def(PROGRESS).execute_in_process(
        instance=night.instance, raise_on_error=False
    )
    step, failure = _failure_of(result)
    assert step == "follow_up_jobs"
    assert "\n" not in failure.description
    assert failure.description.startswith("Sidekiq's Redis unreachable.")
    assert "TEACHCOMPUTING_SIDEKIQ_REDIS_URL" in failure.description
    assert "s3cretpass" not in failure.description


def test_a_bug_keeps_its_stack_trace():
    from partners_dagster.defs.failures import fails_in_one_line

    @fails_in_one_line
    def broken():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        broken()
