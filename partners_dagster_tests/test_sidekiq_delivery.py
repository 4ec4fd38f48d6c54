"""Delivery to a real Redis, read back by a real Sidekiq 6 / ActiveJob 6.1 consumer in Ruby.

Needs Debian's redis-server, ruby, ruby-sidekiq, ruby-activejob, ruby-globalid and ruby-redis
(scripts/install_test_services.sh); skips, saying which is missing, only when they are absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from partners_dagster.sidekiq.delivery import (
    MARKER_PREFIX,
    REDIS_URL_VARIABLE,
    SidekiqRedisUnavailableError,
    deliver,
    redis_client_from_url,
)
from partners_dagster.sidekiq.payload import (
    ASSESSMENT_ELIGIBILITY_JOB,
    AUTO_ENROL_JOB,
    CERTIFICATE_PENDING_TRANSITION_JOB,
    CHECK_NEXT_STEPS_JOB,
    COMPLETE_ACHIEVEMENT_EMAIL_JOB,
    ISSUE_BADGE_JOB,
    OutboxRow,
    serialize_arguments,
)
from partners_dagster.sidekiq.resource import SidekiqResource
from partners_dagster_tests.redis_server import REDIS_SERVER, REDIS_SERVER_MISSING, RedisServer

RUBY = shutil.which("ruby")
CONSUMER = Path(__file__).parent / "ruby" / "sidekiq_consumer.rb"
APP = "teach-computing"
USER_1 = "0b9b5b4e-3f0a-4c55-9d55-0c1b8f1f2a01"
USER_2 = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a04"
ACHIEVEMENT_1 = "7d3c9a52-1b7e-4f7a-8a1c-5e2d4b6f9c02"
ACHIEVEMENT_2 = "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c05"
ACTIVITY = "c1e2d3f4-a5b6-4c7d-8e9f-0a1b2c3d4e03"
PROGRAMMES = [
    {"id": 3, "type": "Programmes::PrimaryCertificate", "slug": "primary-certificate"},
    {"id": 5, "type": None, "slug": "secondary-certificate"},
]

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason=REDIS_SERVER_MISSING)


def _ruby_missing() -> str | None:
    if RUBY is None:
        return "ruby is not installed (run scripts/install_test_services.sh)"
    check = subprocess.run(
        [
            RUBY,
            "-e",
            'require "active_job"; require "sidekiq"; require "global_id"; require "redis"',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check.returncode != 0:
        return (
            "ruby-activejob, ruby-sidekiq, ruby-globalid or ruby-redis is missing "
            f"(run scripts/install_test_services.sh): {check.stderr.strip()[-300:]}"
        )
    return None


RUBY_MISSING = _ruby_missing()
needs_ruby = pytest.mark.skipif(RUBY_MISSING is not None, reason=RUBY_MISSING or "")


# -- an outbox in SQLite, committed on every call as OutboxStore asks ----------------------------


class SqliteOutboxStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, job_class TEXT NOT NULL,"
                " queue TEXT NOT NULL, arguments TEXT NOT NULL, run_at TEXT NOT NULL,"
                " created_at TEXT NOT NULL, jid TEXT, dispatched_at TEXT, delivery_error TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, timeout=30)

    def add(self, job_class: str, arguments: Any, run_at: datetime, created_at: datetime) -> int:
        return self.add_many([(job_class, arguments, run_at, created_at)])[0]

    def add_many(self, rows: list[tuple[str, Any, datetime, datetime]]) -> list[int]:
        with self._connect() as db:
            db.execute("BEGIN")
            ids = [
                db.execute(
                    "INSERT INTO outbox (job_class, queue, arguments, run_at, created_at)"
                    " VALUES (?, 'default', ?, ?, ?)",
                    (job_class, json.dumps(arguments), run_at.isoformat(), created.isoformat()),
                ).lastrowid
                for job_class, arguments, run_at, created in rows
            ]
            db.execute("COMMIT")
            return ids

    def pending_rows(self) -> list[OutboxRow]:
        with self._connect() as db:
            found = db.execute(
                "SELECT id, job_class, queue, arguments, run_at, created_at, jid FROM outbox"
                " WHERE dispatched_at IS NULL AND delivery_error IS NULL ORDER BY id"
            ).fetchall()
        return [
            OutboxRow(
                id=row_id,
                job_class=job_class,
                queue=queue,
                arguments=json.loads(arguments),
                run_at=datetime.fromisoformat(run_at),
                created_at=datetime.fromisoformat(created_at),
                jid=jid,
            )
            for row_id, job_class, queue, arguments, run_at, created_at, jid in found
        ]

    def waiting(self) -> tuple[int, datetime | None]:
        with self._connect() as db:
            count, oldest = db.execute(
                "SELECT count(*), min(created_at) FROM outbox"
                " WHERE dispatched_at IS NULL AND delivery_error IS NULL"
            ).fetchone()
        return count, None if oldest is None else datetime.fromisoformat(oldest)

    def set_aside_count(self) -> int:
        with self._connect() as db:
            return db.execute(
                "SELECT count(*) FROM outbox"
                " WHERE dispatched_at IS NULL AND delivery_error IS NOT NULL"
            ).fetchone()[0]

    def claim_jids(self, jids: Mapping[int, str]) -> dict[int, str | None]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE outbox SET jid = ? WHERE id = ? AND jid IS NULL",
                [(jid, row_id) for row_id, jid in jids.items()],
            )
            held = {
                row_id: db.execute("SELECT jid FROM outbox WHERE id = ?", (row_id,)).fetchone()[0]
                for row_id in jids
            }
            db.execute("COMMIT")
            return held

    def set_aside(self, errors: Mapping[int, str]) -> None:
        with self._connect() as db:
            db.executemany(
                "UPDATE outbox SET delivery_error = ? WHERE id = ?",
                [(error, row_id) for row_id, error in errors.items()],
            )

    def mark_dispatched(self, row_ids: Sequence[int], dispatched_at: datetime) -> None:
        with self._connect() as db:
            db.executemany(
                "UPDATE outbox SET dispatched_at = ? WHERE id = ?",
                [(dispatched_at.isoformat(), row_id) for row_id in row_ids],
            )

    def rows(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM outbox ORDER BY id")]


def fill_outbox(store: SqliteOutboxStore, now: datetime) -> list[int]:
    """One row of each kind (two certificates: an STI programme and one with a null type)."""
    created = now - timedelta(hours=3)
    rows = [
        (
            CERTIFICATE_PENDING_TRANSITION_JOB,
            {"programme_type": "Programmes::PrimaryCertificate", "programme_id": 3, "user_id": USER_1},
            now + timedelta(minutes=1),
        ),
        (
            CERTIFICATE_PENDING_TRANSITION_JOB,
            {"programme_type": None, "programme_id": 5, "user_id": USER_2},
            now + timedelta(minutes=1),
        ),
        (ASSESSMENT_ELIGIBILITY_JOB, {"user_id": USER_1}, now),
        (ISSUE_BADGE_JOB, {"achievement_id": ACHIEVEMENT_1}, now + timedelta(minutes=2)),
        (CHECK_NEXT_STEPS_JOB, {"achievement_id": ACHIEVEMENT_1}, now + timedelta(days=2)),
        (COMPLETE_ACHIEVEMENT_EMAIL_JOB, {"user_id": USER_1, "activity_id": ACTIVITY}, now),
        (AUTO_ENROL_JOB, {"achievement_id": ACHIEVEMENT_2}, now),
    ]  # fmt: skip
    return [
        store.add(job_class, serialize_arguments(job_class, **fields), run_at, created)
        for job_class, fields, run_at in rows
    ]


def jobs_in_redis(client: redis.Redis) -> list[dict[str, Any]]:
    queued = [json.loads(raw) for raw in client.lrange("queue:default", 0, -1)]
    scheduled = [json.loads(raw) for raw in client.zrange("schedule", 0, -1)]
    return queued + scheduled


def jid_counts(client: redis.Redis) -> Counter[str]:
    return Counter(job["jid"] for job in jobs_in_redis(client))


def run_consumer(command: str, redis_url: str, tmp_path: Path, **env: str) -> dict | None:
    output = tmp_path / f"consumer-{command}.json"
    completed = subprocess.run(
        [RUBY, str(CONSUMER), command],
        env={
            **os.environ,
            "REDIS_URL": redis_url,
            "PROGRAMMES": json.dumps(PROGRAMMES),
            "GLOBALID_APP": APP,
            "OUTPUT": str(output),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(output.read_text()) if output.exists() else None


@pytest.fixture
def redis_server(tmp_path):
    if REDIS_SERVER is None:
        pytest.skip(REDIS_SERVER_MISSING)
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def client(redis_server):
    client = redis_client_from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def store(tmp_path):
    return SqliteOutboxStore(tmp_path / "outbox.sqlite")


def now_utc() -> datetime:
    return datetime.now(UTC)


# -- delivery ------------------------------------------------------------------------------------


@needs_redis
def test_each_row_is_pushed_once_to_its_queue_or_the_schedule(store, client):
    now = now_utc()
    ids = fill_outbox(store, now)

    result = deliver(store, client, globalid_app=APP, now=now)

    assert result.delivered == {
        "CertificatePendingTransitionJob": 2,
        "AssessmentEligibilityJob": 1,
        "IssueBadgeJob": 1,
        "CSAccelerator::CheckNextStepsJob": 1,
        "CompleteAchievementEmailJob": 1,
        "CSAccelerator::AutoEnrolJob": 1,
    }
    assert (result.recovered, result.waiting, result.oldest_waiting_age) == (0, 0, None)
    rows = store.rows()
    assert [row["id"] for row in rows] == ids
    assert all(row["jid"] and row["dispatched_at"] for row in rows)
    assert client.smembers("queues") == {b"default"}
    queued = {json.loads(raw)["wrapped"] for raw in client.lrange("queue:default", 0, -1)}
    assert queued == {
        "AssessmentEligibilityJob",
        "CompleteAchievementEmailJob",
        "CSAccelerator::AutoEnrolJob",
    }
    scheduled = {
        json.loads(raw)["jid"]: score
        for raw, score in client.zrange("schedule", 0, -1, withscores=True)
    }
    by_jid = {row["jid"]: row for row in rows}
    assert len(scheduled) == 4
    for jid, score in scheduled.items():
        assert score == pytest.approx(datetime.fromisoformat(by_jid[jid]["run_at"]).timestamp())
    assert jid_counts(client) == Counter({row["jid"]: 1 for row in rows})
    for row in rows:
        ttl = client.ttl(MARKER_PREFIX + row["jid"])
        assert timedelta(days=3) < timedelta(seconds=ttl) <= timedelta(days=14)

    again = deliver(store, client, globalid_app=APP, now=now_utc())
    assert (again.delivered, again.recovered, again.waiting) == ({}, 0, 0)
    assert sum(jid_counts(client).values()) == len(ids)


def test_without_redis_rows_only_wait_and_are_reported(store):
    now = now_utc()
    fill_outbox(store, now)
    later = now + timedelta(hours=1)

    result = deliver(store, None, globalid_app=APP, now=later)

    assert result.delivered == {}
    assert result.waiting == 7
    assert result.oldest_waiting_age == timedelta(hours=4)
    assert all(row["jid"] is None and row["dispatched_at"] is None for row in store.rows())
    unconfigured = SidekiqResource(redis_url=None).deliver(store, now=later)
    assert (unconfigured.waiting, unconfigured.delivered) == (7, {})


def test_without_redis_the_rows_are_counted_not_loaded(tmp_path):
    # A first night leaves some 170,000 rows waiting when no Redis is set: they are counted
    # by the store, never read into memory.
    class CountsOnly(SqliteOutboxStore):
        def pending_rows(self):
            raise AssertionError("rows were loaded only to be counted")

    store = CountsOnly(tmp_path / "outbox.sqlite")
    now = now_utc()
    fill_outbox(store, now)
    result = deliver(store, None, globalid_app=APP, now=now + timedelta(hours=1))
    assert (result.waiting, result.oldest_waiting_age) == (7, timedelta(hours=4))


def test_unreachable_redis_names_the_variable_and_leaves_rows_undelivered(store):
    fill_outbox(store, now_utc())
    resource = SidekiqResource(redis_url="redis://:hunter2secret@127.0.0.1:9/0", timeout_seconds=2)

    with pytest.raises(SidekiqRedisUnavailableError) as failure:
        resource.deliver(store, now=now_utc())

    message = str(failure.value)
    assert REDIS_URL_VARIABLE in message
    assert "127.0.0.1:9" in message
    assert "hunter2secret" not in message
    assert "hunter2secret" not in repr(resource)
    assert "7 stay undelivered" in message
    assert failure.value.result.waiting == 7
    assert all(row["dispatched_at"] is None for row in store.rows())


class StopsRedisOnThirdRow(SqliteOutboxStore):
    """An outbox whose Redis goes away as the third row is about to be pushed."""

    def __init__(self, path: Path, server: RedisServer):
        super().__init__(path)
        self.server = server
        self.assigned = 0

    def claim_jids(self, jids: Mapping[int, str]) -> dict[int, str | None]:
        held = super().claim_jids(jids)
        self.assigned += len(jids)
        if self.assigned >= 3:
            self.server.stop()
        return held


@needs_redis
def test_redis_stopped_during_delivery_then_the_next_run_delivers_the_rest(tmp_path):
    server = RedisServer(tmp_path / "redis", password="s3cret-pass").start()
    try:
        outage = StopsRedisOnThirdRow(tmp_path / "outbox.sqlite", server)
        ids = fill_outbox(outage, now_utc())
        resource = SidekiqResource(redis_url=server.url, timeout_seconds=2, batch_size=1)

        with pytest.raises(SidekiqRedisUnavailableError) as failure:
            resource.deliver(outage, now=now_utc())

        message = str(failure.value)
        assert REDIS_URL_VARIABLE in message
        assert "s3cret-pass" not in message
        assert "redis://:***@127.0.0.1" in message
        assert failure.value.result.delivered_total == 2
        assert failure.value.result.waiting == len(ids) - 2
        rows = outage.rows()
        assert [bool(row["dispatched_at"]) for row in rows] == [True, True] + [False] * 5

        server.start()  # the same data directory: the two pushed jobs are still there
        result = resource.deliver(SqliteOutboxStore(outage.path), now=now_utc())

        assert result.delivered_total == len(ids) - 2
        assert result.waiting == 0
        rows = outage.rows()
        assert all(row["dispatched_at"] for row in rows)
        with redis_client_from_url(server.url) as check:
            assert jid_counts(check) == Counter({row["jid"]: 1 for row in rows})
    finally:
        server.stop()


def _deliver_in_a_child_killed_at(store, redis_server, killed_row: int, *batch: str) -> None:
    """Delivers ``store``'s outbox in a child process that kills itself (SIGKILL) at the row
    ``killed_row`` (``_kill_after_push``; ``batch``: its batch size and kill point)."""
    child = subprocess.run(
        [sys.executable, "-m", __name__, "kill-after-push", str(store.path), redis_server.url,
         str(killed_row), *batch],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert child.returncode == -9, child.stderr[-2000:]


@needs_redis
def test_a_process_killed_between_push_and_marking_pushes_nothing_twice(
    store, redis_server, client
):
    now = now_utc()
    ids = fill_outbox(store, now)
    killed_row = ids[3]

    _deliver_in_a_child_killed_at(store, redis_server, killed_row)
    rows = {row["id"]: row for row in store.rows()}
    assert [bool(rows[i]["dispatched_at"]) for i in ids] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert rows[killed_row]["jid"] is not None
    assert jid_counts(client)[rows[killed_row]["jid"]] == 1

    result = deliver(store, client, globalid_app=APP, now=now_utc())

    assert result.recovered == 1
    assert result.delivered_total == 3
    rows = store.rows()
    assert all(row["dispatched_at"] for row in rows)
    assert jid_counts(client) == Counter({row["jid"]: 1 for row in rows})


class KillsItselfAfterPush(SqliteOutboxStore):
    """Dies (SIGKILL) when asked to mark the row ``row_id`` dispatched: after its push, before
    its mark; or, with ``after_claim``, as soon as its jid is recorded, before any push."""

    def __init__(self, path: Path, row_id: int, after_claim: bool = False):
        super().__init__(path)
        self.row_id = row_id
        self.after_claim = after_claim

    def claim_jids(self, jids: Mapping[int, str]) -> dict[int, str | None]:
        held = super().claim_jids(jids)
        if self.after_claim and self.row_id in jids:  # recorded, not yet pushed
            os.kill(os.getpid(), 9)
        return held

    def mark_dispatched(self, row_ids: Sequence[int], dispatched_at: datetime) -> None:
        if self.row_id in row_ids:  # pushed, not yet marked
            os.kill(os.getpid(), 9)
        super().mark_dispatched(row_ids, dispatched_at)


def _kill_after_push(
    db_path: str, redis_url: str, row_id: str, batch_size: str = "1", point: str = "push"
) -> None:
    with redis_client_from_url(redis_url) as client:
        deliver(
            KillsItselfAfterPush(Path(db_path), int(row_id), after_claim=point == "claim"),
            client,
            globalid_app=APP,
            now=now_utc(),
            batch_size=int(batch_size),
        )
    raise SystemExit("the row to be killed on was never pushed")


def many_rows(store: SqliteOutboxStore, count: int, now: datetime) -> list[int]:
    """``count`` rows, queued and scheduled, in one commit."""
    created = now - timedelta(hours=1)
    return store.add_many(
        [
            (
                ISSUE_BADGE_JOB if i % 2 else CHECK_NEXT_STEPS_JOB,
                [f"{i:08d}-0000-4000-8000-000000000000"],
                now + (timedelta(days=2) if i % 3 == 0 else timedelta(0)),
                created,
            )
            for i in range(count)
        ]
    )


@needs_redis
@pytest.mark.parametrize("point", ["push", "claim"])
def test_a_process_killed_inside_a_batch_loses_and_doubles_nothing(
    store, redis_server, client, point
):
    # 2,500 rows in batches of 500; killed in the third batch, after its push and before its
    # marks ("push"), or after its jids are recorded and before its push ("claim").
    ids = many_rows(store, 2_500, now_utc())
    killed_row = ids[1_234]

    _deliver_in_a_child_killed_at(store, redis_server, killed_row, "500", point)
    rows = store.rows()
    assert [bool(row["dispatched_at"]) for row in rows] == [True] * 1_000 + [False] * 1_500
    assert all(row["jid"] for row in rows[:1_500])  # recorded before any push of the batch
    assert not any(row["jid"] for row in rows[1_500:])
    in_redis = jid_counts(client)
    third_batch = [row["jid"] for row in rows[1_000:1_500]]
    assert [in_redis[jid] for jid in third_batch] == [1 if point == "push" else 0] * 500
    assert sum(in_redis.values()) == (1_500 if point == "push" else 1_000)

    result = deliver(store, client, globalid_app=APP, now=now_utc(), batch_size=500)

    assert result.recovered == (500 if point == "push" else 0)
    assert result.delivered_total == (1_000 if point == "push" else 1_500)
    assert (result.waiting, result.set_aside_total) == (0, 0)
    rows = store.rows()
    assert [row["jid"] for row in rows[1_000:1_500]] == third_batch  # the same jids pushed
    assert all(row["dispatched_at"] for row in rows)
    assert jid_counts(client) == Counter({row["jid"]: 1 for row in rows})


# -- a row that cannot be delivered --------------------------------------------------------------


@needs_redis
def test_a_row_that_cannot_be_serialized_is_set_aside_and_every_other_row_is_delivered(
    store, client
):
    now = now_utc()
    ids = fill_outbox(store, now)
    created = now - timedelta(hours=1)
    # A lone surrogate (stored as JSON's "\ud800" escape) cannot be written as UTF-8.
    surrogate = store.add(ISSUE_BADGE_JOB, ["bad \ud800 id"], now, created)
    keyed = store.add(ISSUE_BADGE_JOB, {"achievement_id": ACHIEVEMENT_1}, now, created)
    last = store.add(ISSUE_BADGE_JOB, [ACHIEVEMENT_2], now, created)

    result = deliver(store, client, globalid_app=APP, now=now)

    assert set(result.set_aside) == {surrogate, keyed}
    assert "UnicodeEncodeError" in result.set_aside[surrogate]
    assert "arguments must be a JSON list, got dict" in result.set_aside[keyed]
    assert (result.delivered_total, result.waiting, result.set_aside_total) == (8, 0, 2)
    rows = {row["id"]: row for row in store.rows()}
    assert rows[surrogate]["delivery_error"] == result.set_aside[surrogate]
    assert rows[keyed]["dispatched_at"] is None and rows[keyed]["jid"] is None
    assert all(rows[i]["dispatched_at"] for i in [*ids, last])
    assert jid_counts(client) == Counter({rows[i]["jid"]: 1 for i in [*ids, last]})

    again = deliver(store, client, globalid_app=APP, now=now_utc())  # not tried again
    assert (again.set_aside, again.set_aside_total, again.delivered_total) == ({}, 2, 0)


@needs_redis
def test_an_object_arguments_row_in_the_database_is_set_aside_not_pushed_as_its_keys(
    engine, client
):
    from sqlalchemy import insert

    from partners_dagster.steps.follow_up_delivery import RepositoryOutboxStore, outbox_counts
    from partners_dagster.teachcomputing.models import OutboxJob
    from partners_dagster.teachcomputing.repository import TeachComputingRepository

    now = now_utc()
    rows = [
        {"achievement_id": ACHIEVEMENT_1},  # an object: once pushed as ["achievement_id"]
        [ACHIEVEMENT_1],
        ["bad \ud800 id"],  # a lone surrogate
        [ACHIEVEMENT_2],
    ]
    with engine.begin() as connection:
        connection.execute(
            insert(OutboxJob),
            [
                {"job_class": ISSUE_BADGE_JOB, "queue": "default", "arguments": arguments,
                 "run_at": now, "dedup_key": f"row-{i}", "created_at": now}
                for i, arguments in enumerate(rows)
            ],
        )  # fmt: skip
    repository = TeachComputingRepository(engine)

    result = deliver(RepositoryOutboxStore(repository), client, globalid_app=APP, now=now)

    outbox = repository.outbox().set_index("dedup_key")
    assert set(result.set_aside) == {int(outbox.at["row-0", "id"]), int(outbox.at["row-2", "id"])}
    assert "must be a JSON list, got dict" in outbox.at["row-0", "delivery_error"]
    assert "UnicodeEncodeError" in outbox.at["row-2", "delivery_error"]
    assert (result.delivered_total, result.waiting, result.set_aside_total) == (2, 0, 2)
    pushed = [job["args"][0]["arguments"] for job in jobs_in_redis(client)]
    assert sorted(pushed) == sorted([[ACHIEVEMENT_1], [ACHIEVEMENT_2]])
    assert repository.outbox_waiting()[0] == 0 and repository.outbox_set_aside() == 2
    assert outbox_counts(repository.outbox())["waiting"].sum() == 2  # still listed as undelivered


# -- is anyone reading? --------------------------------------------------------------------------


def register_sidekiq_process(client: redis.Redis, identity: str = "web-1:4242:0f1e2d3c") -> None:
    """What a running Sidekiq 6 writes about itself every few seconds (launcher.rb ❤)."""
    client.sadd("processes", identity)
    client.hset(identity, mapping={"info": json.dumps({"hostname": "web-1"}), "busy": 0,
                                   "beat": datetime.now(UTC).timestamp(), "quiet": "false"})  # fmt: skip
    client.expire(identity, 60)


@needs_redis
def test_a_redis_where_no_sidekiq_process_has_registered_warns_naming_the_variable(
    store, redis_server, client
):
    fill_outbox(store, now_utc())
    client.sadd("processes", "gone:1:abc")  # a process that died: its heartbeat expired

    result = SidekiqResource(redis_url=redis_server.url_for_db(7)).deliver(store, now=now_utc())

    assert result.sidekiq_processes == 0
    (warning,) = result.warnings
    assert REDIS_URL_VARIABLE in warning and "/7" in warning
    assert "No Sidekiq process has registered" in warning
    assert result.delivered_total == 7  # pushed all the same: a queue outlives its workers

    register_sidekiq_process(client)
    fill_outbox(SqliteOutboxStore(store.path.with_name("second.sqlite")), now_utc())
    read = SidekiqResource(redis_url=redis_server.url).deliver(
        SqliteOutboxStore(store.path.with_name("second.sqlite")), now=now_utc()
    )
    assert (read.sidekiq_processes, read.warnings) == (1, [])


# -- two deliveries at once ----------------------------------------------------------------------


@needs_redis
def test_two_deliveries_at_once_both_succeed_and_push_each_row_once(engine, redis_server, client):
    import threading

    from sqlalchemy import insert

    from partners_dagster.steps.follow_up_delivery import RepositoryOutboxStore
    from partners_dagster.teachcomputing.models import OutboxJob
    from partners_dagster.teachcomputing.repository import TeachComputingRepository

    now = now_utc()
    with engine.begin() as connection:
        connection.execute(
            insert(OutboxJob),
            [
                {"job_class": ISSUE_BADGE_JOB, "queue": "default",
                 "arguments": [f"{i:08d}-0000-4000-8000-000000000000"], "run_at": now,
                 "dedup_key": f"row-{i}", "created_at": now - timedelta(minutes=5)}
                for i in range(2_500)
            ],
        )  # fmt: skip
    both_read = threading.Barrier(2, timeout=60)

    class ReadsWithTheOther(RepositoryOutboxStore):
        def pending_rows(self):
            rows = super().pending_rows()
            both_read.wait()  # both runs hold the same 2,500 undelivered rows
            return rows

    outcomes: dict[int, Any] = {}

    def run(index: int) -> None:
        store = ReadsWithTheOther(TeachComputingRepository(engine))
        try:
            with redis_client_from_url(redis_server.url) as own_client:
                outcomes[index] = deliver(store, own_client, globalid_app=APP, now=now)
        except Exception as exc:  # what the test reports
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    failures = [o for o in outcomes.values() if isinstance(o, Exception)]
    assert not failures, failures
    assert sum(o.delivered_total for o in outcomes.values()) == 2_500
    assert sum(o.left_to_another_run for o in outcomes.values()) == 2_500
    outbox = TeachComputingRepository(engine).outbox()
    assert outbox["dispatched_at"].notna().all()
    assert jid_counts(client) == Counter({jid: 1 for jid in outbox["jid"]})


# -- the real consumer -------------------------------------------------------------------------


@needs_redis
@needs_ruby
def test_sidekiq_and_activejob_run_every_job_with_the_right_arguments(
    store, redis_server, client, tmp_path
):
    ids = fill_outbox(store, now_utc())
    deliver(store, client, globalid_app=APP, now=now_utc())
    jids = {row["id"]: row["jid"] for row in store.rows()}

    consumed = run_consumer("consume", redis_server.url, tmp_path)

    assert consumed["errors"] == []
    assert (consumed["left_in_queue"], consumed["left_in_schedule"]) == (0, 0)
    assert consumed["versions"]["activejob"].startswith("6.1.")
    assert consumed["versions"]["sidekiq"].startswith("6.")
    received = {record["provider_job_id"]: record for record in consumed["received"]}
    assert set(received) == set(jids.values())
    for record in received.values():
        assert (record["queue_name"], record["locale"], record["timezone"]) == (
            "default",
            "en",
            "UTC",
        )
        assert record["executions"] == 1

    def got(row_id: int) -> tuple[str, list, dict]:
        record = received[jids[row_id]]
        return record["job_class"], record["arguments"], record["keywords"]

    def text(value: str) -> dict:
        return {"value": value, "class": "String"}

    source_keyword = {"hash": [["source", "Symbol", text("partners_dagster")]]}
    assert got(ids[0]) == (
        "CertificatePendingTransitionJob",
        [
            {"programme": {"class": "Programmes::PrimaryCertificate", "id": 3, "slug": "primary-certificate",
                           "gid": "gid://teach-computing/Programmes::PrimaryCertificate/3"}},
            text(USER_1),
            source_keyword,
        ],
        {},
    )  # fmt: skip
    assert got(ids[1]) == (
        "CertificatePendingTransitionJob",
        [
            {"programme": {"class": "Programme", "id": 5, "slug": "secondary-certificate",
                           "gid": "gid://teach-computing/Programme/5"}},
            text(USER_2),
            source_keyword,
        ],
        {},
    )  # fmt: skip
    assert got(ids[2]) == ("AssessmentEligibilityJob", [text(USER_1)], {})
    assert got(ids[3]) == ("IssueBadgeJob", [text(ACHIEVEMENT_1)], {})
    assert got(ids[4]) == ("CSAccelerator::CheckNextStepsJob", [text(ACHIEVEMENT_1)], {})
    assert got(ids[5]) == ("CompleteAchievementEmailJob", [text(USER_1), text(ACTIVITY)], {})
    # perform(achievement_id:) on Ruby 3 accepts it only as a keyword.
    assert got(ids[6]) == (
        "CSAccelerator::AutoEnrolJob",
        [],
        {"achievement_id": text(ACHIEVEMENT_2)},
    )


@needs_redis
@needs_ruby
def test_a_keyword_marked_as_a_plain_hash_fails_in_the_consumer(
    store, redis_server, client, tmp_path
):
    """The control for the keyword check: `_aj_symbol_keys` is a positional hash to Ruby 3."""
    store.add(
        AUTO_ENROL_JOB,
        [{"achievement_id": ACHIEVEMENT_2, "_aj_symbol_keys": ["achievement_id"]}],
        now_utc(),
        now_utc(),
    )
    deliver(store, client, globalid_app=APP, now=now_utc())

    consumed = run_consumer("consume", redis_server.url, tmp_path)

    assert consumed["received"] == []
    assert [error["error"] for error in consumed["errors"]] == ["ArgumentError"]
    assert "achievement_id" in consumed["errors"][0]["message"]


def shape(value: Any) -> Any:
    """Keys (in order) and JSON types, without the values."""
    if isinstance(value, dict):
        return {key: shape(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [shape(inner) for inner in value]
    return type(value).__name__


@needs_redis
@needs_ruby
def test_our_payloads_have_the_structure_of_rubys_own_perform_later(
    store, redis_server, client, tmp_path
):
    fixture = {
        "programme_id": 3,
        "user_id": USER_1,
        "achievement_id": ACHIEVEMENT_1,
        "activity_id": ACTIVITY,
    }
    run_consumer("enqueue", redis_server.url_for_db(1), tmp_path, FIXTURE=json.dumps(fixture))
    now = now_utc()
    created = now - timedelta(hours=3)
    for job_class, fields, run_at in [
        (CERTIFICATE_PENDING_TRANSITION_JOB,
         {"programme_type": "Programmes::PrimaryCertificate", "programme_id": 3, "user_id": USER_1},
         now + timedelta(minutes=1)),
        (ASSESSMENT_ELIGIBILITY_JOB, {"user_id": USER_1}, now),
        (ISSUE_BADGE_JOB, {"achievement_id": ACHIEVEMENT_1}, now + timedelta(minutes=2)),
        (CHECK_NEXT_STEPS_JOB, {"achievement_id": ACHIEVEMENT_1}, now + timedelta(days=2)),
        (COMPLETE_ACHIEVEMENT_EMAIL_JOB, {"user_id": USER_1, "activity_id": ACTIVITY}, now),
        (AUTO_ENROL_JOB, {"achievement_id": ACHIEVEMENT_1}, now),
    ]:  # fmt: skip
        store.add(job_class, serialize_arguments(job_class, **fields), run_at, created)
    deliver(store, client, globalid_app=APP, now=now)

    with redis_client_from_url(redis_server.url_for_db(1)) as ruby_client:
        rubys = {job["wrapped"]: job for job in jobs_in_redis(ruby_client)}
        ruby_scheduled = {
            json.loads(raw)["wrapped"] for raw in ruby_client.zrange("schedule", 0, -1)
        }
        assert ruby_client.smembers("queues") == client.smembers("queues") == {b"default"}
    ours = {job["wrapped"]: job for job in jobs_in_redis(client)}
    our_scheduled = {json.loads(raw)["wrapped"] for raw in client.zrange("schedule", 0, -1)}

    assert len(rubys) == 6
    assert set(ours) == set(rubys)
    assert our_scheduled == ruby_scheduled
    iso_seconds = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    for wrapped, ruby_job in rubys.items():
        our_job = ours[wrapped]
        assert shape(our_job) == shape(ruby_job), wrapped
        assert our_job["args"][0]["arguments"] == ruby_job["args"][0]["arguments"], wrapped
        for key in ("retry", "queue", "class"):
            assert our_job[key] == ruby_job[key]
        ours_serialized, rubys_serialized = our_job["args"][0], ruby_job["args"][0]
        for key in ("job_class", "provider_job_id", "queue_name", "priority", "executions",
                    "exception_executions", "locale", "timezone"):  # fmt: skip
            assert ours_serialized[key] == rubys_serialized[key], (wrapped, key)
        assert iso_seconds.match(ours_serialized["enqueued_at"])
        assert iso_seconds.match(rubys_serialized["enqueued_at"])
        assert re.fullmatch(r"[0-9a-f]{24}", our_job["jid"])


if __name__ == "__main__" and sys.argv[1:2] == ["kill-after-push"]:
    _kill_after_push(*sys.argv[2:7])
