"""The one place that reads this project's environment.

Everything configurable is named in docs/contracts.md ("Environment"). Secrets are not
read here: they reach the API resource through ``dagster.EnvVar`` so that they
never appear in Dagster's run config or logs.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

DEFAULT_CACHE_EXPIRY_SECONDS = 5 * 60 * 60
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MEMBERSHIP_REFRESH_DAYS = 7
# One API call (its attempts and the waits between them) ends within this, however slowly a
# server sends: socket timeouts bound each read, not the whole answer.
DEFAULT_REQUEST_DEADLINE_SECONDS = 120.0
DEFAULT_GLOBALID_APP = "teach-computing"


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def data_dir() -> Path:
    """The folder that holds the embedded defaults (cache, SQLite database, Dagster home)."""
    return Path(os.environ.get("PARTNERS_DAGSTER_DATA") or ".partners_dagster").resolve()


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'teachcomputing.sqlite3'}"


def default_cache_location() -> str:
    return str(data_dir() / "partners_api_cache.sqlite3")


def database_url() -> str:
    return _env("TEACHCOMPUTING_DATABASE_URL") or default_database_url()


def _number(name: str, parse, default, low, high, what: str):
    """Variable ``name`` read as a number from ``low`` to ``high``, or ``default`` when unset;
    anything else fails naming the variable and what it must be."""
    raw = _env(name)
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
    raw = _env(ALLOW_INSECURE_HTTP)
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
    return _env("TEACHCOMPUTING_GLOBALID_APP") or DEFAULT_GLOBALID_APP
