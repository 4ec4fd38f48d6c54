"""Failures an on-call operator can read in one line.

An outage of the API, the database or Sidekiq's Redis is the likeliest night-time failure, and
the UI's run page is where on-call reads it. Raised as is, its cause sits inside some forty
lines of stack trace. :func:`fails_in_one_line` wraps an asset so that these errors end the
step with a ``dagster.Failure``: one line naming what failed, how, and what to check, with the
same facts as metadata. Any other error keeps its stack trace: that one is a bug.

Nothing here imports SQLAlchemy or redis-py: the wiring loads without them, and an error of a
library that was never imported cannot have been raised.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dagster as dg

from ..partners_api.errors import (
    ApiUnavailableError,
    DeadlineExceededError,
    MalformedResponseError,
    PartnersApiError,
    ResponseTooLargeError,
    UnauthorizedError,
)
from ..privacy import mask_url_passwords

F = TypeVar("F", bound=Callable[..., Any])

API_CHECK = (
    "check FL_PARTNERS_URL, the Partners API's status, "
    "and FL_PARTNERS_CONSUMER_KEY / FL_PARTNERS_CONSUMER_SECRET"
)
DATABASE_CHECK = (
    "check TEACHCOMPUTING_DATABASE_URL and that the database is up "
    "(`partners-dagster db check` reads it)"
)
SIDEKIQ_CHECK = (
    "check TEACHCOMPUTING_SIDEKIQ_REDIS_URL and that the website's Redis is up; "
    "the jobs wait in the outbox and go with the next run"
)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(mask_url_passwords(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _attempts(error: PartnersApiError) -> int | None:
    found = re.search(r"after (\d+) attempts", str(error))
    return int(found.group(1)) if found else None


def api_failure(error: PartnersApiError) -> dg.Failure:
    """The step's failure for a Partners API error the client could not get past."""
    attempts = _attempts(error)
    # The client's message starts with the endpoint and the attempts, said already.
    last_error = _one_line(
        re.sub(rf"^{re.escape(error.endpoint)}: (gave up after \d+ attempts: )?", "", str(error))
    )
    if isinstance(error, UnauthorizedError):
        check = "check FL_PARTNERS_CONSUMER_KEY and FL_PARTNERS_CONSUMER_SECRET"
        what = "token refused"
    elif isinstance(error, MalformedResponseError | ResponseTooLargeError):
        check = "check the Partners API's status; the answer was not the documented one"
        what = "unreadable answer"
    elif isinstance(error, DeadlineExceededError):
        check = API_CHECK
        what = "no answer in time"
    elif isinstance(error, ApiUnavailableError):
        check = API_CHECK
        what = "unreachable" if attempts is None else f"unreachable after {attempts} attempts"
    else:
        check = API_CHECK
        what = "failed"
    return dg.Failure(
        description=f"Partners API {error.endpoint}: {what}. Last error: {last_error}. To fix: {check}.",
        metadata={
            "service": "Partners API",
            "endpoint": error.endpoint,
            "attempts": attempts if attempts is not None else "",
            "http_status": error.status if error.status is not None else "",
            "last_error": last_error,
            "check": check,
        },
        allow_retries=False,
    )


# What drivers say when the database cannot be reached at all (psycopg2, sqlite3).
UNREACHABLE_WORDS = ("connect", "could not translate host", "unable to open database", "timeout")


def database_failure(error: BaseException) -> dg.Failure:
    """The step's failure when the Teach Computing database cannot be reached."""
    cause = getattr(error, "orig", None) or error
    # The driver's message names the host and why; SQLAlchemy's own adds the statement and
    # its parameters, which may hold a teacher's email: only the driver's first line is kept.
    last_error = _one_line(str(cause).strip().splitlines()[0] if str(cause).strip() else "")
    unreachable = any(word in last_error.lower() for word in UNREACHABLE_WORDS)
    what = "unreachable" if unreachable else "failed"
    return dg.Failure(
        description=f"Teach Computing database {what}. Last error: {type(cause).__name__}: {last_error}. To fix: {DATABASE_CHECK}.",
        metadata={
            "service": "Teach Computing database",
            "last_error": f"{type(cause).__name__}: {last_error}",
            "check": DATABASE_CHECK,
        },
        allow_retries=False,
    )


def sidekiq_failure(error: BaseException) -> dg.Failure:
    """The step's failure when the website's Sidekiq Redis cannot be reached."""
    cause = error.__cause__ or error
    last_error = _one_line(f"{type(cause).__name__}: {cause}")
    result = getattr(error, "result", None)  # delivery's SidekiqRedisUnavailableError
    counts = {"delivered": result.delivered_total, "waiting": result.waiting} if result else {}
    progress = (
        f" {counts['delivered']} job(s) delivered, {counts['waiting']} wait in the outbox."
        if counts
        else ""
    )
    return dg.Failure(
        description=f"Sidekiq's Redis unreachable.{progress} Last error: {last_error}. To fix: {SIDEKIQ_CHECK}.",
        metadata={
            "service": "Sidekiq Redis",
            **counts,
            "last_error": last_error,
            "check": SIDEKIQ_CHECK,
        },
        allow_retries=False,
    )


def _is_database_outage(error: BaseException) -> bool:
    exc = sys.modules.get("sqlalchemy.exc")
    return exc is not None and isinstance(error, exc.OperationalError | exc.InterfaceError)


def _is_redis_outage(error: BaseException) -> bool:
    delivery = sys.modules.get("partners_dagster.sidekiq.delivery")
    if delivery is not None and isinstance(error, delivery.SidekiqRedisUnavailableError):
        return True
    exceptions = sys.modules.get("redis.exceptions")
    return exceptions is not None and isinstance(
        error, exceptions.ConnectionError | exceptions.TimeoutError
    )


def operator_failure(error: BaseException) -> dg.Failure | None:
    """The one-line failure for an outage of a service the night depends on; None for any
    other error (a bug, which keeps its stack trace)."""
    if isinstance(error, PartnersApiError):
        return api_failure(error)
    if _is_database_outage(error):
        return database_failure(error)
    if _is_redis_outage(error):
        return sidekiq_failure(error)
    return None


@contextlib.contextmanager
def _outages_in_one_line() -> Iterator[None]:
    """Turns an outage raised inside the block into its one-line ``Failure``; a ``Failure``
    and any other error pass through unchanged."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as error:
        failure = operator_failure(error)
        if failure is None:
            raise
        raise failure from None


def fails_in_one_line(fn: F) -> F:
    """Wraps an asset's function: an outage ends the step with a one-line ``Failure``."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Any:
            with _outages_in_one_line():
                yield from fn(*args, **kwargs)

        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _outages_in_one_line():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
