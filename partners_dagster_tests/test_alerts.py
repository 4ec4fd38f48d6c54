"""Alerts with the real SDKs: sentry-sdk posts envelopes to a local HTTP endpoint named by the
DSN; dagster-slack's and slack_sdk's WebClient post to a local stand-in for Slack's Web API; the
freshness check runs on a real temporary DagsterInstance. Loopback only."""

from __future__ import annotations

import gzip
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
import slack_sdk

from partners_dagster.defs import alerts
from partners_dagster.defs.constants import DEGRADED_TAG
from partners_dagster.partners_api import UnauthorizedError


class _Recorder(BaseHTTPRequestHandler):
    """Records every POST (path, headers, decoded body) and answers like the real service."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.received.append((self.path, dict(self.headers), body))
        if self.path.endswith("chat.postMessage"):
            payload = json.dumps({"ok": True, "channel": "C1", "ts": "1.0"}).encode()
        else:
            payload = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def sentry_dsn(recorder, monkeypatch):
    dsn = f"http://publickey@127.0.0.1:{recorder.server_address[1]}/1"
    monkeypatch.setenv("SENTRY_DSN", dsn)
    yield dsn
    import sentry_sdk

    # Close this test's client while its endpoint still listens, so nothing retries later.
    client = sentry_sdk.get_client()
    # Only what alerts.py sends: no integration patched into SQLAlchemy, threading or logging,
    # which would trace every query of a night (and of every later test in this process).
    assert set(client.integrations) == set()
    client.close(timeout=5)
    sentry_sdk.init(dsn=None, default_integrations=False, auto_enabling_integrations=False)
    monkeypatch.setattr(alerts, "_sentry_dsn_in_use", None)


def _sentry_events(recorder, expected: int) -> list[dict]:
    """The event payloads of the envelopes received so far (waits, bounded, for ``expected``)."""
    deadline = time.monotonic() + 10
    while True:
        events = []
        for path, _headers, body in list(recorder.received):
            assert path == "/api/1/envelope/", f"sentry-sdk posted to {path}"
            lines = body.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    events.append(json.loads(payload))
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def _message(event: dict) -> str:
    return event.get("message") or event.get("logentry", {}).get("message", "")


def test_unknown_courses_reach_sentry_one_event_per_course(sentry_dsn, recorder):
    sent = alerts.report_unknown_courses(
        ["Teaching Python", "Teaching Python", "Robots 101"], run_id="run-1"
    )
    assert sent == 2
    events = _sentry_events(recorder, 2)
    assert sorted(_message(e) for e in events) == [
        "FutureLearn course unknown to Teach Computing: Robots 101",
        "FutureLearn course unknown to Teach Computing: Teaching Python",
    ]
    assert {e["level"] for e in events} == {"warning"}
    assert all(e["tags"]["dagster.run_id"] == "run-1" for e in events)
    assert all(e["fingerprint"][:2] == ["partners_dagster", "unknown_course"] for e in events)


def test_a_401_reaches_sentry_without_the_secret(sentry_dsn, recorder, monkeypatch):
    monkeypatch.setenv("FL_PARTNERS_CONSUMER_SECRET", "s3cret-value-never-sent")
    error = UnauthorizedError(
        "course_runs: token refused 2 times (HTTP 401 on http://127.0.0.1/x); "
        "check FL_PARTNERS_CONSUMER_KEY and FL_PARTNERS_CONSUMER_SECRET",
        endpoint="course_runs",
        status=401,
    )
    assert alerts.report_auth_failure(error, endpoint="course_runs", run_id="run-2")
    (event,) = _sentry_events(recorder, 1)
    assert event["level"] == "error"
    assert "HTTP 401" in _message(event) and "course_runs" in _message(event)
    assert event["tags"]["partners_api.endpoint"] == "course_runs"
    assert b"s3cret-value-never-sent" not in b"".join(body for _, _, body in recorder.received)


def test_nothing_is_sent_without_a_dsn(recorder, monkeypatch):
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    assert alerts.report_unknown_courses(["Teaching Python"]) == 0
    assert not alerts.report_auth_failure(RuntimeError("401"), endpoint="course_runs")
    assert recorder.received == []


@dg.op
def _broken_step():
    raise RuntimeError("the sandbox said no")


@dg.job
def broken_job():
    _broken_step()


def run_failure_context(
    instance: dg.DagsterInstance,
    result: dg.ExecuteInProcessResult,
    sensor_name: str = "sentry_on_run_failure",
) -> dg.RunFailureSensorContext:
    """What a run-failure sensor named ``sensor_name`` is given for the failed run ``result``."""
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return dg.build_run_status_sensor_context(
        sensor_name=sensor_name,
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    ).for_run_failure()


@pytest.fixture
def failed_run():
    with dg.instance_for_test() as instance:
        result = broken_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        yield instance, result


def test_the_sentry_run_failure_sensor_reports_a_failed_run(sentry_dsn, recorder, failed_run):
    instance, result = failed_run
    alerts.sentry_on_run_failure(run_failure_context(instance, result))
    (event,) = _sentry_events(recorder, 1)
    assert _message(event).startswith(f"Dagster run of broken_job failed ({result.run_id})")
    assert "_broken_step: RuntimeError: the sandbox said no" in _message(event)
    assert event["tags"]["dagster.job"] == "broken_job"


def test_dagster_slack_run_failure_sensor_posts_to_slack(recorder, failed_run, monkeypatch):
    instance, result = failed_run
    api = f"http://127.0.0.1:{recorder.server_address[1]}/api/"

    class LocalSlack(slack_sdk.WebClient):
        def __init__(self, token=None, **kwargs):
            super().__init__(token=token, base_url=api, timeout=5)

    # dagster-slack builds its WebClient with Slack's address; only that address changes here.
    monkeypatch.setattr("dagster_slack.sensors.WebClient", LocalSlack)
    defs = alerts.alert_definitions(
        {"SLACK_BOT_TOKEN": "xoxb-test-token", "SLACK_CHANNEL": "#partners-alerts"}
    )
    sensor = next(s for s in defs["sensors"] if s.name == "slack_on_run_failure")
    sensor(run_failure_context(instance, result, sensor.name))
    ((path, headers, body),) = recorder.received
    assert path == "/api/chat.postMessage"
    assert headers["Authorization"] == "Bearer xoxb-test-token"
    posted = json.loads(body)
    assert posted["channel"] == "#partners-alerts"
    assert "broken_job" in posted["text"] and "_broken_step" in posted["text"]


def test_a_degraded_progress_launch_is_posted_to_slack(recorder):
    api = f"http://127.0.0.1:{recorder.server_address[1]}/api/"
    sensor = alerts.build_slack_degraded_launch_sensor("xoxb-t", "#ops", base_url=api)

    @dg.op
    def noop():
        return None

    @dg.job(name="update_progress_job")
    def progress():
        noop()

    with dg.instance_for_test() as instance:
        for tags in ({DEGRADED_TAG: "no memberships run tonight"}, {}):
            result = progress.execute_in_process(instance=instance, tags=tags)
            run = instance.get_run_by_id(result.run_id)
            started = next(
                e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_START
            )
            sensor(
                dg.build_run_status_sensor_context(
                    sensor_name=sensor.name,
                    dagster_event=started,
                    dagster_instance=instance,
                    dagster_run=run,
                )
            )
    # Only the degraded run was posted.
    ((path, _headers, body),) = recorder.received
    assert path == "/api/chat.postMessage"
    posted = json.loads(body)
    assert posted["channel"] == "#ops"
    assert "launched degraded: no memberships run tonight" in posted["text"]


@pytest.mark.parametrize(
    ("job_name", "tags", "expected"),
    [
        (
            "update_progress_job",
            {DEGRADED_TAG: "step 1 failed"},
            "launched degraded: step 1 failed",
        ),
        ("update_progress_job", {}, None),
        ("update_memberships_job", {DEGRADED_TAG: "x"}, None),
    ],
)
def test_degraded_launch_message(job_name, tags, expected):
    message = alerts.degraded_launch_message(job_name, "r1", tags)
    assert (message is None) if expected is None else (expected in message)


ALERT_SENSORS = [
    "achievement_progress_freshness_sensor",
    "sentry_on_run_failure",
    "slack_on_degraded_progress_launch",
    "slack_on_run_failure",
]


def test_alert_sensors_always_exist_and_run_only_with_their_variables():
    def statuses(environ):
        sensors = alerts.alert_definitions(environ)["sensors"]
        return {s.name: s.default_status.value for s in sensors}

    everything = {
        "SENTRY_DSN": "http://k@127.0.0.1:9/1",
        "SLACK_BOT_TOKEN": "x",
        "SLACK_CHANNEL": "#c",
    }
    for environ in ({}, {"SLACK_BOT_TOKEN": "x", "SLACK_CHANNEL": " "}, everything):
        assert sorted(statuses(environ)) == ALERT_SENSORS
    assert statuses({}) == {
        "achievement_progress_freshness_sensor": "RUNNING",
        "sentry_on_run_failure": "STOPPED",
        "slack_on_degraded_progress_launch": "STOPPED",
        "slack_on_run_failure": "STOPPED",
    }
    assert statuses({"SENTRY_DSN": "http://k@127.0.0.1:9/1"})["sentry_on_run_failure"] == "RUNNING"
    assert set(statuses(everything).values()) == {"RUNNING"}


def test_a_stopped_alert_sensor_names_its_variables_and_skips_saying_so(failed_run):
    sensors = {s.name: s for s in alerts.alert_definitions({})["sensors"]}
    assert "SENTRY_DSN" in sensors["sentry_on_run_failure"].description
    for name in ("slack_on_run_failure", "slack_on_degraded_progress_launch"):
        assert "SLACK_BOT_TOKEN and SLACK_CHANNEL" in sensors[name].description
        assert sensors[name].description.startswith("OFF until")
    instance, result = failed_run
    skipped = sensors["sentry_on_run_failure"](run_failure_context(instance, result))
    assert isinstance(skipped, dg.SkipReason) and "SENTRY_DSN" in skipped.skip_message


# --- Freshness --------------------------------------------------------------------------------


@dg.asset(name="achievement_progress", group_name="futurelearn_partners")
def _achievement_progress_stub():
    return None


def _check_once(instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation:
    checks = alerts.build_freshness_checks()
    defs = dg.Definitions(
        assets=[_achievement_progress_stub],
        asset_checks=checks,
        jobs=[
            dg.define_asset_job("freshness_only", selection=dg.AssetSelection.all_asset_checks())
        ],
    )
    result = defs.resolve_job_def("freshness_only").execute_in_process(instance=instance)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_key == alerts.FRESHNESS_ASSET
    return evaluation


def _report_materialization(instance: dg.DagsterInstance, age: timedelta) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=alerts.FRESHNESS_ASSET,
            metadata={
                "dagster/last_updated_timestamp": dg.MetadataValue.timestamp(
                    time.time() - age.total_seconds()
                )
            },
        )
    )


def test_a_stale_achievement_progress_fails_the_freshness_check():
    with dg.instance_for_test() as instance:
        _report_materialization(instance, timedelta(hours=27))
        evaluation = _check_once(instance)
        assert not evaluation.passed
        assert evaluation.severity == dg.AssetCheckSeverity.ERROR


def test_a_fresh_achievement_progress_passes_and_never_materialized_fails():
    with dg.instance_for_test() as instance:
        assert not _check_once(instance).passed
        _report_materialization(instance, timedelta(hours=25))
        assert _check_once(instance).passed


def test_the_freshness_sensor_asks_the_daemon_to_run_the_check():
    definitions = alerts.alert_definitions({})
    sensor = definitions["sensors"][0]
    assert sensor.name == "achievement_progress_freshness_sensor"
    defs = dg.Definitions(
        assets=[_achievement_progress_stub],
        asset_checks=definitions["asset_checks"],
        sensors=[sensor],
    )
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    with dg.instance_for_test() as instance:
        request = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        assert isinstance(request, dg.RunRequest)
        assert [key.asset_key for key in request.asset_check_keys] == [alerts.FRESHNESS_ASSET]
