"""Exactly-once delivery of outbox rows to the website's Sidekiq Redis (redis-py, no Dagster).

Undelivered rows go in id order, in batches (``BATCH_SIZE``); for each batch:

1. each row's payload is built and encoded; a row that cannot be (its ``arguments`` are not a
   JSON list, or a string in it is not valid Unicode) is set aside with its error
   (``OutboxStore.set_aside``), reported, and never blocks the others;
2. the jids of the rows are recorded in the database in one commit
   (``OutboxStore.claim_jids``) before anything reaches Redis; a row that already has one
   keeps it. A row that another delivery running at the same time claimed between our read
   and our claim is left to that delivery (it pushes it; if it dies first, the next run
   does);
3. one call of a Lua script pushes the batch: for each row in order, atomically, its payload
   (``SADD queues`` + ``LPUSH queue:<q>``, or ``ZADD schedule`` at ``run_at``) together with a
   marker key ``partners_dagster:delivered:<jid>`` — unless the marker is already there, in
   which case it pushes nothing for that row;
4. the batch's rows are marked dispatched in one commit.

A process that dies between 3 and 4 leaves rows with a jid and a marker: the next run finds
the markers and only marks the rows. The marker lives ``MARKER_TTL``; a row left undelivered
longer than that with a jid would be pushed again, which the ``outbox_drained`` check warns
about long before.

Before delivering, the Redis is asked whether any Sidekiq process has registered there
(Sidekiq's ``processes`` set and each process's heartbeat key): where none has, the jobs are
pushed all the same (a queue outlives its workers' restarts) but a warning names
``TEACHCOMPUTING_SIDEKIQ_REDIS_URL``, since no worker may ever read them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

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
# Rows per batch: one commit of jids, one script call to Redis, one commit of marks.
BATCH_SIZE = 1_000
# Sidekiq 6 adds each process's identity to this set and keeps a hash under the identity,
# expiring 60 s after its last heartbeat (sidekiq/launcher.rb, sidekiq/api.rb ProcessSet).
SIDEKIQ_PROCESSES_KEY = "processes"
# The error kept on a row set aside, at most this long.
MAX_ERROR_LENGTH = 500

# One call pushes a batch, each row atomically with its marker, in order.
# KEYS: the queues set, the schedule set, then per row its marker and its queue's list.
# ARGV: the marker's ttl, then per row its payload, queue name, mode ('queue' or 'schedule')
# and score (run_at, epoch seconds). Returns per row 1 when it pushed, 0 when the marker
# showed an earlier push (and it pushed nothing). A queue is added to the queues set before
# the first push to it in the call, as Sidekiq's client does before each push.
_PUSH_ONCE = """
local pushed = {}
local queued = {}
for i = 1, (#KEYS - 2) / 2 do
  local marker = KEYS[1 + 2 * i]
  local a = 1 + 4 * (i - 1)
  if redis.call('EXISTS', marker) == 1 then
    pushed[i] = 0
  else
    if ARGV[a + 3] == 'schedule' then
      redis.call('ZADD', KEYS[2], ARGV[a + 4], ARGV[a + 1])
    else
      if not queued[ARGV[a + 2]] then
        redis.call('SADD', KEYS[1], ARGV[a + 2])
        queued[ARGV[a + 2]] = true
      end
      redis.call('LPUSH', KEYS[2 + 2 * i], ARGV[a + 1])
    end
    redis.call('SET', marker, '1', 'EX', ARGV[1])
    pushed[i] = 1
  end
end
return pushed
"""


class OutboxStore(Protocol):
    """What delivery needs from the outbox table; each method commits before it returns."""

    def pending_rows(self) -> Sequence[OutboxRow]:
        """Rows with ``dispatched_at`` null that are not set aside, oldest (lowest id) first,
        with their jid if set."""
        ...

    def waiting(self) -> tuple[int, datetime | None]:
        """How many rows have ``dispatched_at`` null and are not set aside, and the oldest
        one's ``created_at``, without loading them (a night with no Redis only counts)."""
        ...

    def set_aside_count(self) -> int:
        """How many undelivered rows are set aside with an error (this run's and earlier)."""
        ...

    def claim_jids(self, jids: Mapping[int, str]) -> Mapping[int, str | None]:
        """Record, in one commit, the jid each row will be pushed as, where the row has none;
        durable before the push. Returns the jid each row holds afterwards."""
        ...

    def set_aside(self, errors: Mapping[int, str]) -> None:
        """Record, in one commit, why each row cannot be delivered; it is not offered again."""
        ...

    def mark_dispatched(self, row_ids: Sequence[int], dispatched_at: datetime) -> None:
        """Record, in one commit, that the rows reached Redis."""
        ...


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery run did and what it left behind."""

    delivered: dict[str, int] = field(default_factory=dict)
    """Rows pushed by this run, per job class."""
    recovered: int = 0
    """Rows an earlier, interrupted run (or one running at the same time) had pushed; this
    run only marked them."""
    waiting: int = 0
    """Rows still undelivered afterwards (not counting those set aside)."""
    oldest_waiting_age: timedelta | None = None
    """Age (from ``created_at``) of the oldest undelivered row, None when there is none."""
    set_aside: dict[int, str] = field(default_factory=dict)
    """Rows this run set aside, by id, with the reason each cannot be delivered."""
    set_aside_total: int = 0
    """Undelivered rows set aside, by this run and earlier ones."""
    left_to_another_run: int = 0
    """Rows another delivery, running at the same time, claimed first; that one pushes them."""
    sidekiq_processes: int | None = None
    """Sidekiq processes registered in the Redis (None when there is no Redis to ask)."""
    warnings: list[str] = field(default_factory=list)
    """What an operator must hear about, each naming what to check."""

    @property
    def delivered_total(self) -> int:
        return sum(self.delivered.values())


class SidekiqRedisUnavailableError(RuntimeError):
    """The website's Sidekiq Redis could not be reached or refused a command; rows that were not
    delivered stay in the outbox for the next run."""

    def __init__(self, message: str, result: DeliveryResult):
        super().__init__(message)
        self.result = result


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


def waiting_age(oldest_created_at: datetime | None, now: datetime) -> timedelta | None:
    """How long the oldest waiting row has waited (never negative), or None if none waits."""
    if oldest_created_at is None:
        return None
    return max(to_utc(now) - to_utc(oldest_created_at), timedelta(0))


def registered_sidekiq_processes(client: redis.Redis) -> int:
    """How many Sidekiq processes have registered in this Redis database and still beat:
    members of ``processes`` whose heartbeat hash has not expired (as ``Sidekiq::ProcessSet``
    counts them)."""
    identities = list(client.smembers(SIDEKIQ_PROCESSES_KEY))
    if not identities:
        return 0
    pipeline = client.pipeline(transaction=False)
    for identity in identities:
        pipeline.exists(identity)
    return sum(int(found) for found in pipeline.execute())


def no_sidekiq_warning(label: str) -> str:
    return (
        f"No Sidekiq process has registered in the Redis at {label} ({REDIS_URL_VARIABLE}): "
        f"its '{SIDEKIQ_PROCESSES_KEY}' set names no live process, so no worker may ever run "
        f"the jobs delivered there. Check that {REDIS_URL_VARIABLE} names the Redis, and the "
        "database number, that the website's Sidekiq reads (and that Sidekiq is running)."
    )


def describe_row_error(exc: Exception) -> str:
    """A row's error as kept on the row: type and message, printable, bounded."""
    text = f"{type(exc).__name__}: {exc}"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:MAX_ERROR_LENGTH]


def encoded_payload(row: OutboxRow, *, jid: str, globalid_app: str, now: datetime) -> bytes:
    """The row's payload as the bytes Sidekiq will read: compact UTF-8 JSON. Raises
    ``ValueError`` (``UnicodeEncodeError`` among them) or ``TypeError`` for a row that cannot be
    delivered as it is."""
    payload = build_payload(row, jid=jid, globalid_app=globalid_app, now=now)
    return encode_payload(payload).encode("utf-8")


def deliver(
    store: OutboxStore,
    redis_client: redis.Redis | None,
    *,
    globalid_app: str,
    now: datetime,
    redis_label: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> DeliveryResult:
    """Deliver every undelivered outbox row once; without a client, only report what waits.

    A row that cannot be delivered is set aside with its error and the others go on. Raises
    ``SidekiqRedisUnavailableError`` (naming ``TEACHCOMPUTING_SIDEKIQ_REDIS_URL``, never a
    password) when Redis fails; rows delivered before the failure stay delivered."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if redis_client is None:
        waiting, oldest_created_at = store.waiting()
        return DeliveryResult(
            waiting=waiting,
            oldest_waiting_age=waiting_age(oldest_created_at, now),
            set_aside_total=store.set_aside_count(),
        )

    label = redis_label or describe_client(redis_client)
    push_once = redis_client.register_script(_PUSH_ONCE)
    delivered: Counter[str] = Counter()
    set_aside: dict[int, str] = {}
    warnings: list[str] = []
    recovered = 0
    left_to_another_run = 0
    processes: int | None = None

    def result() -> DeliveryResult:
        waiting, oldest_created_at = store.waiting()
        return DeliveryResult(
            delivered=dict(delivered),
            recovered=recovered,
            waiting=waiting,
            oldest_waiting_age=waiting_age(oldest_created_at, now),
            set_aside=dict(set_aside),
            set_aside_total=store.set_aside_count(),
            left_to_another_run=left_to_another_run,
            sidekiq_processes=processes,
            warnings=list(warnings),
        )

    def failure(exc: Exception) -> SidekiqRedisUnavailableError:
        partial = result()
        return SidekiqRedisUnavailableError(
            f"Sidekiq's Redis at {label} ({REDIS_URL_VARIABLE}) failed: "
            f"{type(exc).__name__}: {exc}. {partial.delivered_total + partial.recovered} "
            f"outbox row(s) delivered in this run; {partial.waiting} stay undelivered and "
            "the next run delivers them.",
            partial,
        )

    try:
        redis_client.ping()
        processes = registered_sidekiq_processes(redis_client)
    except redis.exceptions.RedisError as exc:
        raise failure(exc) from exc
    if processes == 0:
        warnings.append(no_sidekiq_warning(label))

    rows = store.pending_rows()
    ttl = b"%d" % int(MARKER_TTL.total_seconds())
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        # 1. Payloads; a row that cannot be built is set aside.
        ready: list[tuple[OutboxRow, str, list[bytes]]] = []
        bad: dict[int, str] = {}
        for row in batch:
            jid = row.jid or new_jid()
            try:
                payload = encoded_payload(row, jid=jid, globalid_app=globalid_app, now=now)
                # The row's keys and arguments for the push script (see _PUSH_ONCE).
                pushes = [
                    (MARKER_PREFIX + jid).encode(),
                    f"queue:{row.queue}".encode(),
                    payload,
                    row.queue.encode(),
                    b"schedule" if is_scheduled(row, now) else b"queue",
                    repr(epoch_seconds(row.run_at)).encode(),
                ]
            except (ValueError, TypeError, OverflowError, AttributeError) as exc:
                bad[row.id] = describe_row_error(exc)
            else:
                ready.append((row, jid, pushes))
        if bad:
            store.set_aside(bad)
            set_aside.update(bad)
        # 2. The jids, durable before any push.
        new = {row.id: jid for row, jid, _ in ready if row.jid is None}
        held = store.claim_jids(new) if new else {}
        to_push = []
        for row, jid, pushes in ready:
            if row.jid is None and held.get(row.id) != jid:
                left_to_another_run += 1  # claimed first by a delivery running now
            else:
                to_push.append((row, jid, pushes))
        if not to_push:
            continue
        # 3. One script call: each row's push with its marker, atomic per row.
        keys: list[bytes] = [b"queues", b"schedule"]
        args: list[bytes] = [ttl]
        for _, _, pushes in to_push:
            keys += pushes[:2]
            args += pushes[2:]
        try:
            pushed = push_once(keys=keys, args=args)
        except redis.exceptions.RedisError as exc:
            raise failure(exc) from exc
        # 4. The marks, one commit for the batch.
        store.mark_dispatched([row.id for row, _, _ in to_push], now)
        for (row, _, _), outcome in zip(to_push, pushed, strict=True):
            if int(outcome) == 1:
                delivered[row.job_class] += 1
            else:
                recovered += 1

    return result()
