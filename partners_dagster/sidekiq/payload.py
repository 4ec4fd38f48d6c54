"""The Sidekiq payloads the website's Rails 6.1 ActiveJob would push, built from outbox rows.

Pure functions: no Redis, no Dagster, no clock (callers pass ``now``).

Two layers, as Rails writes them (activejob 6.1.7 ``queue_adapters/sidekiq_adapter.rb`` and
``core.rb#serialize``; sidekiq 6.4 ``job_util.rb#normalize_item`` and ``client.rb#atomic_push``):

* the Sidekiq job hash, ``class`` = ActiveJob's ``JobWrapper``, ``wrapped`` = the job class,
  ``args`` = ``[<the serialized job>]``, ``retry`` false (the website's
  ``default_job_options``), ``jid``, ``created_at`` and, for a job pushed to a queue,
  ``enqueued_at`` (Sidekiq leaves it out of jobs in the ``schedule`` set and adds it when its
  poller moves them);
* the serialized job, ActiveJob 6.1's ``serialize`` hash. Its ``enqueued_at`` is
  ``Time.now.utc.iso8601``: whole seconds, ``Z`` (7.x writes nanoseconds; 6.1 does not).

The outbox stores ``arguments`` already serialized the way ``ActiveJob::Arguments.serialize``
writes them; the builders below produce them for the six follow-up jobs. A Programme is a
GlobalID; the GlobalID app may be left as ``GLOBALID_APP_PLACEHOLDER`` when the row is written
and is filled in from ``TEACHCOMPUTING_GLOBALID_APP`` when the payload is built.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

JOB_WRAPPER_CLASS = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
DEFAULT_QUEUE = "default"
DEFAULT_SOURCE = "partners_dagster"
LOCALE = "en"
TIMEZONE = "UTC"

# ActiveJob::Arguments' reserved keys (activejob 6.1 arguments.rb).
GLOBALID_KEY = "_aj_globalid"
SYMBOL_KEYS_KEY = "_aj_symbol_keys"
RUBY2_KEYWORDS_KEY = "_aj_ruby2_keywords"
RESERVED_KEYS = frozenset(
    {
        GLOBALID_KEY,
        SYMBOL_KEYS_KEY,
        RUBY2_KEYWORDS_KEY,
        "_aj_serialized",
        "_aj_hash_with_indifferent_access",
    }
)

# Written in place of the app in a stored GlobalID; no real app name contains braces.
GLOBALID_APP_PLACEHOLDER = "{globalid_app}"

CERTIFICATE_PENDING_TRANSITION_JOB = "CertificatePendingTransitionJob"
ASSESSMENT_ELIGIBILITY_JOB = "AssessmentEligibilityJob"
ISSUE_BADGE_JOB = "IssueBadgeJob"
CHECK_NEXT_STEPS_JOB = "CSAccelerator::CheckNextStepsJob"
COMPLETE_ACHIEVEMENT_EMAIL_JOB = "CompleteAchievementEmailJob"
AUTO_ENROL_JOB = "CSAccelerator::AutoEnrolJob"

# A fixed namespace, so that a jid always gives the same ActiveJob job_id.
_JOB_ID_NAMESPACE = uuid.UUID("5f0c2d7e-4a4b-4f3e-9a65-7d1b2c9e8a10")
_JOB_ID_NAMESPACE_BYTES = _JOB_ID_NAMESPACE.bytes
# Compact JSON, UTF-8 kept as is (Ruby's JSON.generate); made once, not per payload.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class OutboxRow:
    """One undelivered outbox row, as an ``OutboxStore`` hands it to delivery."""

    id: int
    job_class: str
    arguments: list[Any]
    run_at: datetime
    created_at: datetime
    queue: str = DEFAULT_QUEUE
    jid: str | None = None


# -- arguments, as ActiveJob::Arguments.serialize writes them -----------------------------------


def programme_globalid(
    programme_type: str | None, programme_id: int | str, *, app: str = GLOBALID_APP_PLACEHOLDER
) -> dict[str, str]:
    """A Programme as ActiveJob serializes a GlobalID::Identification: ``{"_aj_globalid": ...}``.

    The class is the programme's STI ``type`` column (e.g. ``Programmes::PrimaryCertificate``),
    ``Programme`` when it is null, as ``to_global_id`` names the record's own class."""
    model = programme_type or "Programme"
    return {GLOBALID_KEY: f"gid://{app}/{model}/{programme_id}"}


def keyword_arguments(**keywords: Any) -> dict[str, Any]:
    """Keyword arguments as ActiveJob 6.1 serializes them.

    ``perform_later`` is declared ``ruby2_keywords``, so on Ruby 2.7+ the trailing
    ``key: value`` arguments arrive as a flagged hash, which ``serialize_argument`` marks with
    ``_aj_ruby2_keywords`` (a plain ``{key: value}`` hash gets ``_aj_symbol_keys``); on the
    worker, ``perform(*arguments)`` then passes it as keywords again."""
    for key in keywords:
        if key in RESERVED_KEYS:
            raise ValueError(f"keyword argument {key!r} is a key ActiveJob reserves")
    return {**keywords, RUBY2_KEYWORDS_KEY: list(keywords)}


def certificate_pending_transition_arguments(
    *,
    programme_type: str | None,
    programme_id: int | str,
    user_id: str,
    source: str = DEFAULT_SOURCE,
    globalid_app: str = GLOBALID_APP_PLACEHOLDER,
) -> list[Any]:
    """``perform_later(programme, user_id, source: "partners_dagster")``."""
    return [
        programme_globalid(programme_type, programme_id, app=globalid_app),
        user_id,
        keyword_arguments(source=source),
    ]


def assessment_eligibility_arguments(*, user_id: str) -> list[Any]:
    """``perform_later(user_id)``."""
    return [user_id]


def issue_badge_arguments(*, achievement_id: str) -> list[Any]:
    """``perform_later(achievement_id)``."""
    return [achievement_id]


def check_next_steps_arguments(*, achievement_id: str) -> list[Any]:
    """``perform_later(achievement_id)``."""
    return [achievement_id]


def complete_achievement_email_arguments(*, user_id: str, activity_id: str) -> list[Any]:
    """``perform_later(user_id, activity_id)``."""
    return [user_id, activity_id]


def auto_enrol_arguments(*, achievement_id: str) -> list[Any]:
    """``perform_later(achievement_id: achievement_id)``: one keyword argument."""
    return [keyword_arguments(achievement_id=achievement_id)]


ARGUMENT_BUILDERS: Mapping[str, Callable[..., list[Any]]] = {
    CERTIFICATE_PENDING_TRANSITION_JOB: certificate_pending_transition_arguments,
    ASSESSMENT_ELIGIBILITY_JOB: assessment_eligibility_arguments,
    ISSUE_BADGE_JOB: issue_badge_arguments,
    CHECK_NEXT_STEPS_JOB: check_next_steps_arguments,
    COMPLETE_ACHIEVEMENT_EMAIL_JOB: complete_achievement_email_arguments,
    AUTO_ENROL_JOB: auto_enrol_arguments,
}
JOB_CLASSES = tuple(ARGUMENT_BUILDERS)


def serialize_arguments(job_class: str, **fields: Any) -> list[Any]:
    """The serialized arguments for one of the six follow-up jobs, by class name; ``fields``
    are that job's builder's keywords (e.g. ``user_id=``, ``achievement_id=``)."""
    try:
        builder = ARGUMENT_BUILDERS[job_class]
    except KeyError:
        raise ValueError(
            f"no argument builder for job class {job_class!r}; known: {', '.join(JOB_CLASSES)}"
        ) from None
    return builder(**fields)


def resolve_globalids(arguments: Any, app: str) -> Any:
    """``arguments`` with every placeholder GlobalID app replaced by ``app``; GlobalIDs that
    name an app already are kept as stored."""
    if isinstance(arguments, list):
        return [resolve_globalids(item, app) for item in arguments]
    if isinstance(arguments, dict):
        gid = arguments.get(GLOBALID_KEY)
        if len(arguments) == 1 and isinstance(gid, str):
            prefix = f"gid://{GLOBALID_APP_PLACEHOLDER}/"
            if gid.startswith(prefix):
                return {GLOBALID_KEY: f"gid://{app}/{gid.removeprefix(prefix)}"}
            return dict(arguments)
        return {key: resolve_globalids(value, app) for key, value in arguments.items()}
    return arguments


# -- the job hash ------------------------------------------------------------------------------


def new_jid() -> str:
    """A Sidekiq job id: 24 hex characters, as ``SecureRandom.hex(12)``."""
    return secrets.token_hex(12)


def job_id_for(jid: str) -> str:
    """The ActiveJob ``job_id`` (a UUID) of the job pushed as ``jid``; the same every time:
    ``str(uuid.uuid5(namespace, jid))``, computed without building ``UUID`` objects (delivery
    makes one per row)."""
    digest = bytearray(hashlib.sha1(_JOB_ID_NAMESPACE_BYTES + jid.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_scheduled(row: OutboxRow, now: datetime) -> bool:
    """A row still in the future goes to the ``schedule`` set; one due goes to its queue."""
    return _utc(row.run_at) > _utc(now)


def serialize_job(row: OutboxRow, *, jid: str, globalid_app: str, now: datetime) -> dict[str, Any]:
    """ActiveJob 6.1's ``serialize`` hash (the one element of the Sidekiq job's ``args``)."""
    if not isinstance(row.arguments, list):
        raise ValueError(
            f"outbox row {row.id} ({row.job_class}): arguments must be a JSON list, "
            f"got {type(row.arguments).__name__}"
        )
    return {
        "job_class": row.job_class,
        "job_id": job_id_for(jid),
        "provider_job_id": None,
        "queue_name": row.queue,
        "priority": None,
        "arguments": resolve_globalids(row.arguments, globalid_app),
        "executions": 0,
        "exception_executions": {},
        "locale": LOCALE,
        "timezone": TIMEZONE,
        "enqueued_at": _iso_seconds(now),
    }


def build_payload(row: OutboxRow, *, jid: str, globalid_app: str, now: datetime) -> dict[str, Any]:
    """The Sidekiq job hash ActiveJob 6.1's adapter pushes for ``row``, keys in Sidekiq's order.

    ``created_at`` is when the outbox row was written (when the website would have queued
    it); ``enqueued_at`` is ``now``, and only on a job pushed to its queue."""
    payload: dict[str, Any] = {
        "retry": False,
        "queue": row.queue,
        "class": JOB_WRAPPER_CLASS,
        "wrapped": row.job_class,
        "args": [serialize_job(row, jid=jid, globalid_app=globalid_app, now=now)],
        "jid": jid,
        "created_at": _utc(row.created_at).timestamp(),
    }
    if not is_scheduled(row, now):
        payload["enqueued_at"] = _utc(now).timestamp()
    return payload


def encode_payload(payload: Mapping[str, Any]) -> str:
    """The payload as Sidekiq stores it: compact JSON, UTF-8 kept as is (Ruby's JSON.generate)."""
    return _ENCODER.encode(payload)


def epoch_seconds(moment: datetime) -> float:
    """Seconds since the epoch, as Ruby's ``Time#to_f``."""
    return _utc(moment).timestamp()


def to_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive value is taken to be UTC already."""
    return _utc(moment)


@lru_cache(maxsize=8)
def _iso_seconds(moment: datetime) -> str:
    # ActiveJob 6.1's ``Time.now.utc.iso8601``; one ``now`` serves a whole delivery.
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(moment: datetime) -> datetime:
    # The database keeps UTC; a naive value read back from it is UTC.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
