"""Alerts an operator hears: Sentry, Slack, and a freshness check on ``achievement_progress``.

Nobody watches the UI at 3 am. As the website's old jobs did, unknown courses and refused tokens
(401) reach Sentry, and so does every failed run; Slack hears about failed runs and about a
progress run launched degraded; and a freshness check fails when ``achievement_progress`` has
not been materialized for 26 hours. Every channel is off until its variables are set:

| variable | turns on |
|---|---|
| ``SENTRY_DSN`` (``SENTRY_ENVIRONMENT`` optional) | Sentry events |
| ``SLACK_BOT_TOKEN`` and ``SLACK_CHANNEL`` | the Slack sensors |

``sentry_sdk`` and ``dagster_slack`` are imported only when used, so importing this module does
no work and reads no environment variable; :func:`alert_definitions` reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

from ..settings import variable
from .constants import DEGRADED_TAG, PROGRESS_JOB

FRESHNESS_ASSET = dg.AssetKey("achievement_progress")
# Step 2 runs every night between 02:30 and 05:45; 26 hours leaves room for a late night
# without letting a whole missed night pass unnoticed.
FRESHNESS_LIMIT = timedelta(hours=26)
SLACK_API_URL = "https://slack.com/api/"
# Sentry delivers from a background thread; a run pod may exit right after the asset, so each
# report waits (at most this long) for its events to leave.
SENTRY_FLUSH_SECONDS = 5.0


@dataclass(frozen=True)
class AlertSettings:
    sentry_dsn: str | None
    sentry_environment: str | None
    slack_token: str | None
    slack_channel: str | None

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_token and self.slack_channel)


def alert_settings(environ: Mapping[str, str] | None = None) -> AlertSettings:
    """The alert variables (of ``environ``, or of this process), blanks read as unset."""

    def value(name: str) -> str | None:
        return variable(name, environ)

    return AlertSettings(
        sentry_dsn=value("SENTRY_DSN"),
        sentry_environment=value("SENTRY_ENVIRONMENT"),
        slack_token=value("SLACK_BOT_TOKEN"),
        slack_channel=value("SLACK_CHANNEL"),
    )


# --- Sentry -----------------------------------------------------------------------------------

_sentry_dsn_in_use: str | None = None


def _sentry():
    """``sentry_sdk``, initialised for ``SENTRY_DSN`` in this process; None when it is unset."""
    global _sentry_dsn_in_use
    settings = alert_settings()
    if settings.sentry_dsn is None:
        return None
    import sentry_sdk

    if _sentry_dsn_in_use != settings.sentry_dsn or not sentry_sdk.get_client().is_active():
        sentry_sdk.init(
            dsn=settings.sentry_dsn,
            environment=settings.sentry_environment,
            # Only what this module sends explicitly: the logging integration would forward
            # any ERROR log line, and those may name a teacher.
            default_integrations=False,
            # Nor the integrations it would switch on by itself (SQLAlchemy, threading, ...):
            # they would trace every query of the night and slow it down for nothing.
            auto_enabling_integrations=False,
            traces_sample_rate=0.0,
        )
        _sentry_dsn_in_use = settings.sentry_dsn
    return sentry_sdk


def _capture(message: str, *, level: str, fingerprint: list[str], tags: Mapping[str, str]) -> bool:
    sentry_sdk = _sentry()
    if sentry_sdk is None:
        return False
    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = fingerprint
        for key, tag in tags.items():
            scope.set_tag(key, tag)
        sentry_sdk.capture_message(message, level=level)
    sentry_sdk.flush(timeout=SENTRY_FLUSH_SECONDS)
    return True


def report_unknown_courses(titles: Iterable[str], *, run_id: str | None = None) -> int:
    """One Sentry warning per FutureLearn course unknown to Teach Computing, with its title
    (grouped per course, as the website reported them). Returns how many were sent: 0 without
    ``SENTRY_DSN``. Step 1 calls it once a night."""
    sent = 0
    for title in dict.fromkeys(titles):
        tags = {"partners_dagster.alert": "unknown_course"}
        if run_id:
            tags["dagster.run_id"] = run_id
        if _capture(
            f"FutureLearn course unknown to Teach Computing: {title}",
            level="warning",
            fingerprint=["partners_dagster", "unknown_course", title],
            tags=tags,
        ):
            sent += 1
    return sent


def report_auth_failure(error: Exception, *, endpoint: str, run_id: str | None = None) -> bool:
    """A Sentry error for a 401 the client could not get past (``UnauthorizedError``): the
    consumer key or secret is wrong. The message is the error's, which names the variables and
    never their values. Returns whether it was sent."""
    tags = {"partners_dagster.alert": "unauthorized", "partners_api.endpoint": endpoint}
    if run_id:
        tags["dagster.run_id"] = run_id
    return _capture(
        f"Partners API refused our token (HTTP 401) on {endpoint}: {error}",
        level="error",
        fingerprint=["partners_dagster", "unauthorized"],
        tags=tags,
    )


def report_run_failure(job_name: str, run_id: str, reason: str | None) -> bool:
    """A Sentry error for a failed run. Returns whether it was sent."""
    return _capture(
        f"Dagster run of {job_name} failed ({run_id}): {reason or 'no failure message'}",
        level="error",
        fingerprint=["partners_dagster", "run_failure", job_name],
        tags={
            "partners_dagster.alert": "run_failure",
            "dagster.job": job_name,
            "dagster.run_id": run_id,
        },
    )


@dg.run_failure_sensor(
    name="sentry_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends every failed run of this code location to Sentry (on: SENTRY_DSN is set).",
)
def sentry_on_run_failure(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    reasons = [context.failure_event.message or ""]
    for event in context.get_step_failure_events()[:1]:
        error = event.step_failure_data.error
        # Dagster wraps the asset's exception; its innermost cause names what went wrong.
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            reasons.append(f"{event.step_key}: {error.message.strip()[:500]}")
    report_run_failure(run.job_name, run.run_id, " ".join(r for r in reasons if r))


# --- Slack ------------------------------------------------------------------------------------


def degraded_launch_message(job_name: str, run_id: str, tags: Mapping[str, str]) -> str | None:
    """The Slack text for a progress run launched degraded; None for any other run."""
    if job_name != PROGRESS_JOB or DEGRADED_TAG not in tags:
        return None
    return (
        f":warning: {job_name} run {run_id} was launched degraded: {tags[DEGRADED_TAG]}. "
        "Progress is computed on the previous night's membership links."
    )


def post_slack_message(text: str, *, token: str, channel: str, base_url: str = SLACK_API_URL):
    """Posts ``text`` to ``channel`` through Slack's Web API (``chat.postMessage``)."""
    from slack_sdk import WebClient

    return WebClient(token=token, base_url=base_url).chat_postMessage(channel=channel, text=text)


def build_slack_degraded_launch_sensor(
    token: str, channel: str, *, base_url: str = SLACK_API_URL
) -> dg.RunStatusSensorDefinition:
    """A sensor that tells Slack when a progress run starts with the degraded tag."""

    @dg.run_status_sensor(
        name="slack_on_degraded_progress_launch",
        run_status=dg.DagsterRunStatus.STARTED,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Tells Slack when {PROGRESS_JOB} starts tagged {DEGRADED_TAG} "
        "(on: SLACK_BOT_TOKEN and SLACK_CHANNEL are set).",
    )
    def slack_on_degraded_progress_launch(context: dg.RunStatusSensorContext) -> None:
        run = context.dagster_run
        text = degraded_launch_message(run.job_name, run.run_id, run.tags)
        if text is not None:
            post_slack_message(text, token=token, channel=channel, base_url=base_url)

    return slack_on_degraded_progress_launch


def build_slack_run_failure_sensor(token: str, channel: str) -> dg.SensorDefinition:
    """dagster-slack's run-failure sensor for this code location."""
    from dagster_slack import make_slack_on_run_failure_sensor

    return make_slack_on_run_failure_sensor(
        channel=channel,
        slack_token=token,
        name="slack_on_run_failure",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )


# --- Freshness --------------------------------------------------------------------------------


def build_freshness_checks() -> list[dg.AssetChecksDefinition]:
    """Fails (ERROR) when ``achievement_progress`` has no materialization in the last 26 hours."""
    return list(
        dg.build_last_update_freshness_checks(
            assets=[FRESHNESS_ASSET],
            lower_bound_delta=FRESHNESS_LIMIT,
            severity=dg.AssetCheckSeverity.ERROR,
        )
    )


def build_freshness_sensor(checks: list[dg.AssetChecksDefinition]) -> dg.SensorDefinition:
    """The daemon's sensor that runs the freshness check whenever it may have changed state
    (a check-only run: it calls no API and writes nothing)."""
    return dg.build_sensor_for_freshness_checks(
        freshness_checks=checks,
        name="achievement_progress_freshness_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )


def _switched_off(name: str, variables: str, what: str) -> dg.SensorDefinition:
    """A stopped stand-in for an alert sensor whose variables are unset: the Sensors page
    lists it, off, and its description names what turns it on. Started anyway, it skips,
    saying the same."""
    reason = f"off: {variables} not set"

    @dg.run_failure_sensor(
        name=name,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"OFF until {variables} set: {what}",
    )
    def switched_off(context: dg.RunFailureSensorContext):
        return dg.SkipReason(reason)

    return switched_off


def alert_definitions(environ: Mapping[str, str] | None = None) -> dict:
    """What to merge into ``Definitions``: ``{"sensors": [...], "asset_checks": [...]}``.

    Every alert sensor is always there, so the Sensors page shows what alerting is off: the
    freshness check's sensor runs; the Sentry sensor runs when ``SENTRY_DSN`` is set and the
    two Slack sensors when ``SLACK_BOT_TOKEN`` and ``SLACK_CHANNEL`` are, and otherwise each
    is stopped, its description naming the variables that turn it on."""
    settings = alert_settings(environ)
    checks = build_freshness_checks()
    sensors: list[dg.SensorDefinition] = [build_freshness_sensor(checks)]
    sentry_what = "sends every failed run of this code location to Sentry."
    sensors.append(
        sentry_on_run_failure
        if settings.sentry_dsn
        else _switched_off("sentry_on_run_failure", "SENTRY_DSN is", sentry_what)
    )
    if settings.slack_enabled:
        assert settings.slack_token and settings.slack_channel
        sensors.append(build_slack_run_failure_sensor(settings.slack_token, settings.slack_channel))
        sensors.append(
            build_slack_degraded_launch_sensor(settings.slack_token, settings.slack_channel)
        )
    else:
        slack = "SLACK_BOT_TOKEN and SLACK_CHANNEL are"
        sensors.append(
            _switched_off("slack_on_run_failure", slack, "posts every failed run to Slack.")
        )
        sensors.append(
            _switched_off(
                "slack_on_degraded_progress_launch",
                slack,
                f"tells Slack when {PROGRESS_JOB} starts tagged {DEGRADED_TAG}.",
            )
        )
    return {"sensors": sensors, "asset_checks": checks}


__all__ = [
    "FRESHNESS_ASSET",
    "FRESHNESS_LIMIT",
    "AlertSettings",
    "alert_definitions",
    "alert_settings",
    "build_freshness_checks",
    "build_freshness_sensor",
    "build_slack_degraded_launch_sensor",
    "build_slack_run_failure_sensor",
    "degraded_launch_message",
    "post_slack_message",
    "report_auth_failure",
    "report_run_failure",
    "report_unknown_courses",
    "sentry_on_run_failure",
]
