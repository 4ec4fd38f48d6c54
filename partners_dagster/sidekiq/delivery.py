"""Exactly-once delivery of outbox rows to the website's Sidekiq Redis (redis-py, no Dagster).

For each undelivered row, in id order:

1. its jid is recorded in the database (``OutboxStore.assign_jid``, committed) before anything
   reaches Redis; a row that already has one keeps it;
2. one Lua script, atomic in Redis, pushes the payload (``SADD queues`` + ``LPUSH queue:<q>``,
   or ``ZADD schedule`` at ``run_at``) together with a marker key
   ``partners_dagster:delivered:<jid>`` — unless the marker is already there, in which case it
   pushes nothing;
3. the row is marked dispatched.

A process that dies between 2 and 3 leaves a row with a jid and a marker: the next run finds
the marker and only marks the row. The marker lives ``MARKER_TTL``; a row left undelivered
longer than that with a jid would be pushed again, which the ``outbox_drained`` check warns
about long before.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from partners_dagster.sidekiq.payload import (
    OutboxRow,
    build_payload,
    encode_payload,
    epoch_seconds,
    is_scheduled,
    new_jid,
    to_utc,
)

REDIS_URL_VARIABLE = "TEACHCOMPUTING_SIDEKIQ_REDIS_URL"
MARKER_PREFIX = "partners_dagster:delivered:"
MARKER_TTL = timedelta(days=14)

# KEYS: marker, queues set, queue list, schedule set. ARGV: payload, queue name, mode, score, ttl.
# Returns 1 when it pushed, 0 when the marker showed an earlier push.
_PUSH_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if ARGV[3] == 'schedule' then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
else
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('LPUSH', KEYS[3], ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[5])
return 1
"""


class OutboxStore(Protocol):
    """What delivery needs from the outbox table; each method commits before it returns."""

    def pending_rows(self) -> Sequence[OutboxRow]:
        """Rows with ``dispatched_at`` null, oldest (lowest id) first, with their jid if set."""
        ...

    def waiting(self) -> tuple[int, datetime | None]:
        """How many rows have ``dispatched_at`` null, and the oldest one's ``created_at``,
        without loading them (a night with no Redis to deliver to only counts)."""
        ...

    def assign_jid(self, row_id: int, jid: str) -> None:
        """Record the jid the row will be pushed as; durable before the push."""
        ...

    def mark_dispatched(self, row_id: int, dispatched_at: datetime) -> None:
        """Record that the row reached Redis."""
        ...


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery run did and what it left behind."""

    delivered: dict[str, int] = field(default_factory=dict)
    """Rows pushed by this run, per job class."""
    recovered: int = 0
    """Rows an earlier, interrupted run had pushed; this run only marked them."""
    waiting: int = 0
    """Rows still undelivered afterwards."""
    oldest_waiting_age: timedelta | None = None
    """Age (from ``created_at``) of the oldest undelivered row, None when there is none."""

    @property
    def delivered_total(self) -> int:
        return sum(self.delivered.values())


class SidekiqRedisUnavailableError(RuntimeError):
    """The website's Sidekiq Redis could not be reached or refused a command; rows that were not
    delivered stay in the outbox for the next run."""

    def __init__(self, message: str, result: DeliveryResult):
        super().__init__(message)
        self.result = result


def mask_redis_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (user names kept)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable Redis URL>"


def describe_client(client: Any) -> str:
    """Where ``client`` connects, without credentials: ``redis://host:port/db``."""
    try:
        kwargs = client.connection_pool.connection_kwargs
    except AttributeError:
        return "Redis"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = "rediss" if kwargs.get("ssl") else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def redis_client_from_url(url: str, *, timeout_seconds: float = 10.0) -> redis.Redis:
    """A redis-py client for Sidekiq's Redis: bounded timeouts and two quick retries, which
    cannot double a push (the script checks the marker first)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=2),
        decode_responses=False,
    )


def waiting_summary(rows: Sequence[OutboxRow], now: datetime) -> tuple[int, timedelta | None]:
    """How many rows wait and the age of the oldest, from ``created_at``."""
    oldest = min((to_utc(row.created_at) for row in rows), default=None)
    return len(rows), waiting_age(oldest, now)


def waiting_age(oldest_created_at: datetime | None, now: datetime) -> timedelta | None:
    """How long the oldest waiting row has waited (never negative), or None if none waits."""
    if oldest_created_at is None:
        return None
    return max(to_utc(now) - to_utc(oldest_created_at), timedelta(0))


def deliver(
    store: OutboxStore,
    redis_client: redis.Redis | None,
    *,
    globalid_app: str,
    now: datetime,
    redis_label: str | None = None,
) -> DeliveryResult:
    """Deliver every undelivered outbox row once; without a client, only report what waits.

    Raises ``SidekiqRedisUnavailableError`` (naming ``TEACHCOMPUTING_SIDEKIQ_REDIS_URL``, never
    a password) when Redis fails; rows delivered before the failure stay delivered."""
    if redis_client is None:
        waiting, oldest_created_at = store.waiting()
        return DeliveryResult(
            waiting=waiting, oldest_waiting_age=waiting_age(oldest_created_at, now)
        )
    rows = list(store.pending_rows())

    label = redis_label or describe_client(redis_client)
    push_once = redis_client.register_script(_PUSH_ONCE)
    delivered: Counter[str] = Counter()
    recovered = 0
    done = 0

    def failure(exc: Exception) -> SidekiqRedisUnavailableError:
        remaining = rows[done:]
        waiting, oldest = waiting_summary(remaining, now)
        result = DeliveryResult(dict(delivered), recovered, waiting, oldest)
        return SidekiqRedisUnavailableError(
            f"Sidekiq's Redis at {label} ({REDIS_URL_VARIABLE}) failed: "
            f"{type(exc).__name__}: {exc}. {done} outbox row(s) delivered in this run; "
            f"{waiting} stay undelivered and the next run delivers them.",
            result,
        )

    try:
        redis_client.ping()
    except redis.exceptions.RedisError as exc:
        raise failure(exc) from exc

    for row in rows:
        jid = row.jid
        if jid is None:
            jid = new_jid()
            store.assign_jid(row.id, jid)
        payload = build_payload(row, jid=jid, globalid_app=globalid_app, now=now)
        scheduled = is_scheduled(row, now)
        try:
            pushed = push_once(
                keys=[MARKER_PREFIX + jid, "queues", f"queue:{row.queue}", "schedule"],
                args=[
                    encode_payload(payload),
                    row.queue,
                    "schedule" if scheduled else "queue",
                    repr(epoch_seconds(row.run_at)),
                    int(MARKER_TTL.total_seconds()),
                ],
            )
        except redis.exceptions.RedisError as exc:
            raise failure(exc) from exc
        store.mark_dispatched(row.id, now)
        done += 1
        if int(pushed) == 1:
            delivered[row.job_class] += 1
        else:
            recovered += 1

    return DeliveryResult(dict(delivered), recovered, 0, None)
