"""What the on-call operator reads in the Dagster UI (issue 24): one-line failures with their
retries logged as they happen, run-wide network and cache counts, a warning for a run that
asked the network nothing, no false "Unsynced", and the guard rails of runs launched from the
UI. Real parts: the sandbox API over HTTP, SQLite, Redis, and real Dagster instances."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

import dagster as dg
import pytest

from partners_dagster.definitions import build_definitions
from partners_dagster.sandbox.dataset import advance_night
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


def _one_line_failure_with(night: Night, job: str, **resources) -> tuple[str, dg.Failure]:
    """The failed step and its failure when ``job`` runs with ``resources`` replaced; the
    failure reads in one line."""
    defs = build_definitions({**night.resources, **resources})
    result = defs.resolve_job_def(job).execute_in_process(
        instance=night.instance, raise_on_error=False
    )
    step, failure = _failure_of(result)
    assert "\n" not in failure.description
    return step, failure


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
    step, failure = _one_line_failure_with(
        night, MEMBERSHIPS, teachcomputing_db=TeachComputingDatabaseResource(database_url=url)
    )
    assert step == "course_runs"
    assert failure.description.startswith("Teach Computing database unreachable.")
    assert "TEACHCOMPUTING_DATABASE_URL" in failure.description
    assert "db check" in failure.description
    shown = failure.description + repr({k: v.value for k, v in failure.metadata.items()})
    assert "hunter2secret" not in shown


def test_an_unreachable_sidekiq_redis_ends_the_step_in_one_line(night):
    assert night.run(MEMBERSHIPS).success
    redis_url = f"redis://:s3cretpass@127.0.0.1:{_closed_port()}/0"
    step, failure = _one_line_failure_with(
        night,
        PROGRESS,
        sidekiq=SidekiqResource(redis_url=redis_url, globalid_app="teach-computing"),
    )
    assert step == "follow_up_jobs"
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


# --- No false "Unsynced" ----------------------------------------------------------------------


def _stale_statuses(night: Night) -> dict[str, str]:
    """Each asset's staleness as the UI computes it (its GraphQL `staleStatus` uses this
    resolver on the instance and the asset graph)."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest

    resolver = CachingStaleStatusResolver(
        night.instance, night.defs.resolve_asset_graph(), LoadingContextForTest(night.instance)
    )
    return {
        key.to_user_string(): resolver.get_status(key).value
        for key in night.defs.resolve_asset_graph().get_all_asset_keys()
    }


def test_step_two_leaves_step_ones_assets_up_to_date(night):
    night.both_steps()
    statuses = _stale_statuses(night)
    assert statuses == dict.fromkeys(statuses, "FRESH"), statuses


def test_a_changed_api_answer_still_makes_step_ones_assets_stale(night):
    night.run(MEMBERSHIPS)
    night.resources["partners_api"].client.clear_cache()
    with night.api._lock:  # the next night's data, as the sandbox's /advance makes it
        advance_night(night.api.dataset, 2)
        night.api._index_memberships()
    night.run(PROGRESS)
    statuses = _stale_statuses(night)
    assert statuses["organisation_memberships"] == "STALE"
    assert statuses["course_runs"] == "FRESH"


# --- Network against cache -------------------------------------------------------------------


def _checks(result: dg.ExecuteInProcessResult, name: str) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.asset_check_evaluation_data.asset_key.to_user_string(): e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        and e.asset_check_evaluation_data.check_name == name
    }


def test_a_run_that_asked_the_network_nothing_warns_and_a_normal_night_does_not(night):
    first, second = night.both_steps()
    for result in (first, second):
        checks = _checks(result, "answers_from_the_network")
        assert checks and all(c.passed for c in checks.values()), checks
    assert {k: v.value for k, v in checks["achievement_progress"].metadata.items()}[
        "run_api_network_requests"
    ] == 0  # step 2 read tonight's answers from the cache, as it should
    again = night.run(MEMBERSHIPS)
    checks = _checks(again, "answers_from_the_network")
    assert set(checks) == {
        "course_runs",
        "course_enrolments",
        "organisation_memberships",
        "membership_links",
    }
    for check in checks.values():
        assert not check.passed
        assert check.severity == dg.AssetCheckSeverity.WARN
        assert "no network request" in check.description


def test_a_single_asset_rebuild_reports_the_runs_network_and_cache_counts(night):
    night.both_steps()
    job = night.defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("latest_enrolments")}
    )
    result = job.execute_in_process(instance=night.instance)
    (check,) = _checks(result, "answers_from_the_network").values()
    counts = {k: v.value for k, v in check.metadata.items()}
    # Rebuilding course_runs and course_enrolments read every answer from the cache.
    assert counts["run_api_network_requests"] == 0
    assert counts["run_api_cache_hits"] > 0
    assert not check.passed


# --- The night in one entry ------------------------------------------------------------------


def _materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_the_last_asset_of_each_job_sums_up_the_night(night):
    memberships, progress = night.both_steps()
    step_one = _materialization(memberships, "membership_links")["night_summary"]
    assert "| memberships linked |" in step_one and "| unmatched | no such user" in step_one
    assert "| Partners API answers | network " in step_one
    step_two = _materialization(progress, "follow_up_jobs")["night_summary"]
    achievements = _materialization(progress, "achievement_progress")
    assert (
        f"created {achievements['achievements_created']} · "
        f"progressed {achievements['achievements_progressed']} · "
        f"completed {achievements['achievements_completed']}"
    ) in step_two
    waiting = _materialization(progress, "follow_up_jobs")["waiting"]
    assert waiting > 0
    assert f"waiting {waiting} (**Follow-up jobs wait and TEACHCOMPUTING_SIDEKIQ_REDIS_URL" in (
        step_two
    )


def test_outbox_drained_warns_when_jobs_wait_and_no_sidekiq_is_set(night):
    _, progress = night.both_steps()
    (check,) = _checks(progress, "outbox_drained").values()
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert "TEACHCOMPUTING_SIDEKIQ_REDIS_URL is not set" in check.description


# --- `partners-dagster ui` stops -------------------------------------------------------------

# Stands in for `dagster dev`: starts a child that would outlive it, says so, and waits; on
# SIGINT it exits at once, as a process that forgets its children would.
FAKE_DAGSTER_DEV = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
try:
    time.sleep(120)
except KeyboardInterrupt:
    open(sys.argv[1], "w").write("stopped cleanly")
    sys.exit(0)
"""


@pytest.mark.parametrize(
    ("signum", "started_in_the_background"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
    ids=["ctrl-c", "sigterm", "sigterm-started-by-a-script"],
)
def test_the_ui_stops_dagster_dev_and_everything_it_started(
    signum, started_in_the_background, tmp_path, monkeypatch
):
    import psutil

    from partners_dagster.tools import local_instance

    monkeypatch.setattr(local_instance, "STOP_GRACE_SECONDS", 5.0)
    if started_in_the_background:
        # A shell script's `cmd &` starts cmd with SIGINT ignored.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    marker = tmp_path / "stopped"
    out = tmp_path / "child.pid"
    script = FAKE_DAGSTER_DEV.replace(
        "print(child.pid, flush=True)", f"open({str(out)!r}, 'w').write(str(child.pid))"
    )
    started = time.monotonic()

    def signal_me_once_the_child_runs():
        while not out.exists() or not out.read_text():
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    threading.Thread(target=signal_me_once_the_child_runs, daemon=True).start()
    try:
        status = local_instance.run_until_stopped(
            [sys.executable, "-c", script, str(marker)], dict(os.environ)
        )
    finally:
        if started_in_the_background:
            signal.signal(signal.SIGINT, previous)
    assert status == 0
    assert marker.read_text() == "stopped cleanly"
    assert time.monotonic() - started < 60
    grandchild = int(out.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie"
