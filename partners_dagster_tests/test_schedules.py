"""The nightly schedules on a real temporary instance holding runs in each status."""

from __future__ import annotations

import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from partners_dagster.definitions import build_definitions
from partners_dagster.defs.constants import DEGRADED_TAG, MEMBERSHIPS_RUN_TAG, NIGHT_TAG
from partners_dagster.defs.schedules import update_memberships_schedule, update_progress_schedule

defs = build_definitions()

LONDON = ZoneInfo("Europe/London")
S = dg.DagsterRunStatus


@pytest.fixture(autouse=True)
def production_environment(monkeypatch):
    # Creating a run resolves the resources' EnvVars, as on a deployed instance.
    monkeypatch.setenv("FL_PARTNERS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FL_PARTNERS_CONSUMER_KEY", "key")
    monkeypatch.setenv("FL_PARTNERS_CONSUMER_SECRET", "a-secret-of-at-least-thirty-two-bytes!!")


@pytest.fixture
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield instance


def rid(name: str) -> str:
    """Dagster run ids are UUIDs; tests name them."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def add_run(instance, job: str, status: S, night: str | None, name: str) -> None:
    tags = {NIGHT_TAG: night} if night else {}
    instance.create_run_for_job(
        defs.resolve_job_def(job),
        run_id=rid(name),
        status=status,
        tags=tags,
        remote_job_origin=_origin(job) if status == S.QUEUED else None,
    )


def _origin(job: str):
    # Dagster only records a QUEUED run with the code location it would launch from; no
    # public API makes one without a running workspace, so this test names it directly.
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin

    return RemoteRepositoryOrigin(
        RegisteredCodeLocationOrigin("partners_dagster"), "__repository__"
    ).get_job_origin(job)


def tick(instance, local: datetime):
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=local)
    return update_progress_schedule(context)


NIGHT = "2027-01-12"


def at(hour: int, minute: int, day: str = NIGHT, fold: int = 0) -> datetime:
    y, m, d = map(int, day.split("-"))
    return datetime(y, m, d, hour, minute, tzinfo=LONDON, fold=fold)


@pytest.mark.parametrize("status", [S.SUCCESS, S.STARTED, S.QUEUED, S.FAILURE, None])
def test_before_the_window_every_tick_skips(instance, status):
    if status:
        add_run(instance, "update_memberships_job", status, NIGHT, "step-one")
    result = tick(instance, at(2, 15))
    assert isinstance(result, dg.SkipReason) and "before the 02:30 window" in result.skip_message


@pytest.mark.parametrize("when", [at(2, 30), at(3, 45), at(5, 45)])
def test_launches_once_step_one_has_succeeded(instance, when):
    add_run(instance, "update_memberships_job", S.FAILURE, NIGHT, "first-try")
    add_run(instance, "update_memberships_job", S.SUCCESS, NIGHT, "second-try")
    request = tick(instance, when)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == NIGHT
    assert request.tags[MEMBERSHIPS_RUN_TAG] == rid("second-try")
    assert request.tags[NIGHT_TAG] == NIGHT
    assert DEGRADED_TAG not in request.tags


@pytest.mark.parametrize("status", [S.STARTED, S.QUEUED])
@pytest.mark.parametrize("when", [at(2, 30), at(4, 0)])
def test_waits_naming_the_run_while_step_one_is_queued_or_running(instance, status, when):
    add_run(instance, "update_memberships_job", status, NIGHT, "step-one-run")
    result = tick(instance, when)
    assert isinstance(result, dg.SkipReason)
    assert (
        rid("step-one-run") in result.skip_message and status.value.lower() in result.skip_message
    )


@pytest.mark.parametrize("status", [S.STARTED, S.QUEUED])
def test_the_newest_step_one_run_decides_not_an_earlier_success(instance, status):
    # Hardening item 19: a manual step-1 run succeeded after midnight, then the scheduled
    # one started. Progress must wait for the newest, not launch on the earlier success.
    today = datetime.now(LONDON).date().isoformat()
    add_run(instance, "update_memberships_job", S.SUCCESS, None, "manual-after-midnight")
    add_run(instance, "update_memberships_job", status, today, "scheduled-run")
    result = tick(instance, at(3, 0, day=today))
    assert isinstance(result, dg.SkipReason)
    assert rid("scheduled-run") in result.skip_message


@pytest.mark.parametrize("status", [S.FAILURE, None])
def test_after_failure_or_no_run_it_waits_then_launches_degraded_at_the_last_tick(instance, status):
    if status:
        add_run(instance, "update_memberships_job", status, NIGHT, "failed-run")
    waiting = tick(instance, at(3, 0))
    assert isinstance(waiting, dg.SkipReason) and "05:45" in waiting.skip_message
    request = tick(instance, at(5, 45))
    assert isinstance(request, dg.RunRequest) and request.run_key == NIGHT
    assert "previous night's links" in request.tags[DEGRADED_TAG]
    if status:
        assert rid("failed-run") in request.tags[DEGRADED_TAG]


def test_still_running_at_the_last_tick_launches_behind_it_in_the_queue(instance):
    add_run(instance, "update_memberships_job", S.STARTED, NIGHT, "slow-run")
    request = tick(instance, at(5, 45))
    assert isinstance(request, dg.RunRequest)
    assert rid("slow-run") in request.tags[DEGRADED_TAG] and request.tags[
        MEMBERSHIPS_RUN_TAG
    ] == rid("slow-run")


def test_one_progress_run_per_night(instance):
    add_run(instance, "update_memberships_job", S.SUCCESS, NIGHT, "step-one")
    add_run(instance, "update_progress_job", S.SUCCESS, NIGHT, "progress-run")
    result = tick(instance, at(3, 0))
    assert isinstance(result, dg.SkipReason) and rid("progress-run") in result.skip_message
    other_night = tick(instance, at(3, 0, day="2027-01-13"))
    assert (
        isinstance(other_night, dg.SkipReason)
        and "no memberships run tonight" in other_night.skip_message
    )


def test_runs_of_another_night_do_not_count(instance):
    add_run(instance, "update_memberships_job", S.SUCCESS, "2027-01-11", "yesterday")
    result = tick(instance, at(3, 0))
    assert isinstance(result, dg.SkipReason) and "no memberships run tonight" in result.skip_message


def test_a_manual_step_one_run_tonight_counts(instance):
    add_run(instance, "update_memberships_job", S.SUCCESS, None, "manual-run")
    today = datetime.now(LONDON).date().isoformat()
    request = tick(instance, at(5, 45, day=today))
    assert isinstance(request, dg.RunRequest) and request.tags[MEMBERSHIPS_RUN_TAG] == rid(
        "manual-run"
    )


# Daylight saving in 2027: clocks go forward at 01:00 GMT on 28 March (no 01:00–02:00 local)
# and back at 02:00 BST on 31 October (01:00–02:00 local happens twice).
@pytest.mark.parametrize(
    ("night", "when"),
    [
        ("2027-03-28", at(2, 30, "2027-03-28")),
        ("2027-03-28", at(3, 0, "2027-03-28")),
        ("2027-10-31", at(1, 45, "2027-10-31", fold=1)),
        ("2027-10-31", at(2, 30, "2027-10-31")),
    ],
)
def test_daylight_saving_nights(instance, night, when):
    add_run(instance, "update_memberships_job", S.SUCCESS, night, "dst-run")
    result = tick(instance, when)
    if when.astimezone(LONDON).hour < 2 or (when.hour == 2 and when.minute < 30):
        assert isinstance(result, dg.SkipReason)
    else:
        assert isinstance(result, dg.RunRequest) and result.run_key == night


def test_dst_last_tick_is_still_05_45_local(instance):
    request = tick(instance, at(5, 45, "2027-03-28"))
    assert isinstance(request, dg.RunRequest) and request.run_key == "2027-03-28"
    assert DEGRADED_TAG in request.tags
    request = tick(instance, at(5, 45, "2027-10-31"))
    assert isinstance(request, dg.RunRequest) and request.run_key == "2027-10-31"


def test_memberships_schedule_tags_its_night(instance):
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=at(2, 0, "2027-10-31")
    )
    request = update_memberships_schedule(context)
    assert request.run_key == "2027-10-31" and request.tags[NIGHT_TAG] == "2027-10-31"
