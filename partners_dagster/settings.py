"""The one place that reads this project's environment.

Everything configurable is named in docs/contracts.md ("Environment"). No other module reads
``os.environ`` for a setting (test_settings.py pins it). Secrets' values are not read here:
:func:`is_set` says whether one is set, and the definitions build ``dagster.EnvVar`` from its
name, so that it never appears in Dagster's run config or logs.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

DEFAULT_CACHE_EXPIRY_SECONDS = 5 * 60 * 60
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MEMBERSHIP_REFRESH_DAYS = 7
# One API call (its attempts and the waits between them) ends within this, however slowly a
# server sends: socket timeouts bound each read, not the whole answer.
DEFAULT_REQUEST_DEADLINE_SECONDS = 120.0
DEFAULT_GLOBALID_APP = "teach-computing"
# The longest the jobs wait for a row lock (the website's, or another run's): a course or a link
# that waits longer is skipped and reported, and the rest go on. On SQLite, the busy timeout.
DEFAULT_DATABASE_LOCK_TIMEOUT_SECONDS = 60.0
# The longest one statement may run on PostgreSQL before it is cancelled.
DEFAULT_DATABASE_STATEMENT_TIMEOUT_SECONDS = 900.0


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def data_dir() -> Path:
    """The folder that holds the embedded defaults (cache, SQLite database, Dagster home)."""
    return Path(os.environ.get("PARTNERS_DAGSTER_DATA") or ".partners_dagster").resolve()


def variable(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Variable ``name`` of ``environ`` (None: this process's environment), blanks trimmed;
    None when it is unset or blank."""
    value = (os.environ if environ is None else environ).get(name)
    return value.strip() if value and value.strip() else None


def is_set(name: str) -> bool:
    """Whether variable ``name`` holds more than blanks: for a value that may hold a secret,
    whose caller builds ``dagster.EnvVar(name)`` rather than read it."""
    return variable(name) is not None


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'teachcomputing.sqlite3'}"


def default_cache_location() -> str:
    return str(data_dir() / "partners_api_cache.sqlite3")


def database_url() -> str:
    return variable("TEACHCOMPUTING_DATABASE_URL") or default_database_url()


def _number(name: str, parse, default, low, high, what: str):
    """Variable ``name`` read as a number from ``low`` to ``high``, or ``default`` when unset;
    anything else fails naming the variable and what it must be."""
    raw = variable(name)
    if raw is None:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ConfigurationError(f"{name} must be {what}, got {raw[:40]!r}")
    return value


def cache_expiry_seconds() -> int:
    return _number(
        "FL_PARTNERS_CACHE_EXPIRY_SECONDS",
        int,
        DEFAULT_CACHE_EXPIRY_SECONDS,
        0,
        10**9,
        "a whole number of seconds >= 0",
    )


def max_concurrency() -> int:
    return _number(
        "FL_PARTNERS_MAX_CONCURRENCY",
        int,
        DEFAULT_MAX_CONCURRENCY,
        1,
        256,
        "an integer from 1 to 256",
    )


IGNORED_COURSE_UUIDS = "FL_PARTNERS_IGNORED_COURSE_UUIDS"
# A UUID as people write one: dashed or not, in braces or not, after urn:uuid: or not, any case.
_UUID_FORMS = re.compile(
    r"(?:urn:uuid:)?(?P<brace>\{)?"
    r"(?P<hex>[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"(?(brace)\})",
    re.IGNORECASE,
)


def parse_uuid_list(raw: str | None, name: str = IGNORED_COURSE_UUIDS) -> frozenset[str]:
    """Comma-separated UUIDs, blanks ignored, each canonical (lowercase, dashed) whatever form
    it was written in (braces, no dashes, ``urn:uuid:``, upper case). Anything that is not a
    UUID fails, naming the variable ``name`` and the entry: a typo must not go unnoticed."""
    found = set()
    for part in (raw or "").split(","):
        entry = part.strip()
        if not entry:
            continue
        match = _UUID_FORMS.fullmatch(entry)
        if match is None:
            raise ConfigurationError(f"{name}: {entry[:60]!r} is not a UUID")
        found.add(str(uuid.UUID(match["hex"])))
    return frozenset(found)


def ignored_course_uuids_text() -> str:
    """The ignored course UUIDs, canonical and comma-separated (checked now, so a bad entry
    fails when the definitions load)."""
    return ",".join(sorted(parse_uuid_list(os.environ.get(IGNORED_COURSE_UUIDS, ""))))


ALLOW_INSECURE_HTTP = "FL_PARTNERS_ALLOW_INSECURE_HTTP"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def allow_insecure_http() -> bool:
    """Whether FL_PARTNERS_URL may be plain http:// to a host other than this machine."""
    raw = variable(ALLOW_INSECURE_HTTP)
    if raw is None or raw.lower() in _FALSE:
        return False
    if raw.lower() in _TRUE:
        return True
    raise ConfigurationError(f"{ALLOW_INSECURE_HTTP} must be true or false, got {raw[:20]!r}")


def membership_refresh_days() -> float:
    """FL_PARTNERS_MEMBERSHIP_REFRESH_DAYS: how often an unlinked membership already looked up
    is asked for again (0 = every night)."""
    return _number(
        "FL_PARTNERS_MEMBERSHIP_REFRESH_DAYS",
        float,
        DEFAULT_MEMBERSHIP_REFRESH_DAYS,
        0,
        365,
        "a number of days from 0 to 365",
    )


def globalid_app() -> str:
    """TEACHCOMPUTING_GLOBALID_APP: the website's GlobalID app name."""
    return variable("TEACHCOMPUTING_GLOBALID_APP") or DEFAULT_GLOBALID_APP


def database_lock_timeout_seconds() -> float:
    """TEACHCOMPUTING_DATABASE_LOCK_TIMEOUT_SECONDS: how long a statement waits for a lock
    (PostgreSQL's ``lock_timeout``, SQLite's busy timeout)."""
    return _number(
        "TEACHCOMPUTING_DATABASE_LOCK_TIMEOUT_SECONDS",
        float,
        DEFAULT_DATABASE_LOCK_TIMEOUT_SECONDS,
        0.001,
        86_400,
        "a number of seconds from 0.001 to 86400",
    )


def database_statement_timeout_seconds() -> float:
    """TEACHCOMPUTING_DATABASE_STATEMENT_TIMEOUT_SECONDS: how long one statement may run on
    PostgreSQL (``statement_timeout``)."""
    return _number(
        "TEACHCOMPUTING_DATABASE_STATEMENT_TIMEOUT_SECONDS",
        float,
        DEFAULT_DATABASE_STATEMENT_TIMEOUT_SECONDS,
        0.001,
        86_400,
        "a number of seconds from 0.001 to 86400",
    )
