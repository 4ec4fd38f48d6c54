"""Delivery to Sidekiq, measured: rows per second from the outbox to a real Redis on loopback.

    python -m partners_dagster.tools.bench_delivery --rows 100000
    python -m partners_dagster.tools.bench_delivery --rows 20000 --database-url postgresql://...

Fills ``partners_dagster_outbox`` (a fresh SQLite file unless ``--database-url`` names an
empty database) with the follow-up jobs of a first night, in the proportions the progress
step writes them, and delivers them through ``follow_up_jobs``'s own store and
``deliver``. Redis is a throwaway ``redis-server`` on 127.0.0.1 (append-only file with
``--appendfsync`` as given; ``everysec`` is Redis's own default for AOF), or ``--redis-url``
(it must be an empty database: the bench refuses to write into one that holds keys).
Prints one JSON line. A benchmark, not a test: no goal is asserted here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from ..sidekiq.delivery import BATCH_SIZE, deliver, redis_client_from_url
from ..sidekiq.payload import (
    AUTO_ENROL_JOB,
    CERTIFICATE_PENDING_TRANSITION_JOB,
    CHECK_NEXT_STEPS_JOB,
    COMPLETE_ACHIEVEMENT_EMAIL_JOB,
    ISSUE_BADGE_JOB,
    serialize_arguments,
)
from ..steps.follow_up_delivery import RepositoryOutboxStore
from ..teachcomputing.engine import make_engine
from ..teachcomputing.migrate import upgrade
from ..teachcomputing.models import OutboxJob
from ..teachcomputing.repository import TeachComputingRepository, batches
from ..teachcomputing.schema import create_teachcomputing_tables


def outbox_rows(count: int, now: datetime) -> list[dict]:
    """``count`` outbox rows, in about the mix a first night writes: per completion an
    IssueBadgeJob, a CheckNextStepsJob and often an email; some certificates and enrolments."""
    kinds = [
        (ISSUE_BADGE_JOB, timedelta(minutes=2)),
        (CHECK_NEXT_STEPS_JOB, timedelta(days=2)),
        (COMPLETE_ACHIEVEMENT_EMAIL_JOB, timedelta(0)),
        (AUTO_ENROL_JOB, timedelta(0)),
        (CERTIFICATE_PENDING_TRANSITION_JOB, timedelta(minutes=1)),
    ]
    rows = []
    for index in range(count):
        job_class, delay = kinds[index % len(kinds)]
        user_id, achievement_id, activity_id = (str(uuid.uuid4()) for _ in range(3))
        fields = {
            ISSUE_BADGE_JOB: {"achievement_id": achievement_id},
            CHECK_NEXT_STEPS_JOB: {"achievement_id": achievement_id},
            COMPLETE_ACHIEVEMENT_EMAIL_JOB: {"user_id": user_id, "activity_id": activity_id},
            AUTO_ENROL_JOB: {"achievement_id": achievement_id},
            CERTIFICATE_PENDING_TRANSITION_JOB: {
                "programme_type": "Programmes::PrimaryCertificate",
                "programme_id": 3,
                "user_id": user_id,
            },
        }[job_class]
        rows.append(
            {
                "job_class": job_class,
                "queue": "default",
                "arguments": serialize_arguments(job_class, **fields),
                "run_at": now + delay,
                "dedup_key": f"bench:{index}",
                "achievement_id": achievement_id,
                "user_id": user_id,
                "created_at": now - timedelta(minutes=5),
            }
        )
    return rows


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def throwaway_redis(directory: Path, appendfsync: str):
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (scripts/install_test_services.sh)")
    port = _free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
               "--save", "", "--appendonly", "yes", "--appendfsync", appendfsync,
               "--daemonize", "no", "--logfile", str(directory / "redis.log")]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis_client_from_url(url, timeout_seconds=1)
        for _ in range(200):  # at most 10 s
            try:
                client.ping()
                break
            except Exception:
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def bench(rows: int, database_url: str, redis_url: str, batch_size: int = BATCH_SIZE) -> dict:
    engine = make_engine(database_url)
    create_teachcomputing_tables(engine)
    upgrade(engine)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        for chunk in batches(outbox_rows(rows, now)):
            connection.execute(insert(OutboxJob), list(chunk))
    store = RepositoryOutboxStore(TeachComputingRepository(engine))
    client = redis_client_from_url(redis_url)
    if client.dbsize():
        raise SystemExit("the Redis database is not empty: give the bench an empty one")
    started, cpu_started = time.perf_counter(), time.process_time()
    result = deliver(store, client, globalid_app="teach-computing", now=now, batch_size=batch_size)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    pushed = client.llen("queue:default") + client.zcard("schedule")
    script = client.info("commandstats").get("cmdstat_evalsha", {})
    client.close()
    engine.dispose()
    return {
        "rows": rows,
        "delivered": result.delivered_total,
        "in_redis": pushed,
        "seconds": round(seconds, 3),
        "rows_per_second": round(result.delivered_total / seconds),
        # This process's CPU time only (not Redis's, nor SQLite's fsyncs): on a shared, busy
        # machine the wall clock also counts the time other processes held the cores.
        "cpu_seconds": round(cpu_seconds, 3),
        "rows_per_cpu_second": round(result.delivered_total / cpu_seconds),
        # Redis's own time running the pushes (INFO commandstats), per row.
        "redis_usec_per_row": round(script.get("usec", 0) / max(pushed, 1), 2),
        "database": database_url.split(":", 1)[0],
        "batch_size": batch_size,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--database-url", help="an empty database (default: a new SQLite file)")
    parser.add_argument("--redis-url", help="an empty Redis database (default: a throwaway one)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as folder:
        database_url = args.database_url or f"sqlite:///{Path(folder) / 'tc.sqlite3'}"
        if args.redis_url:
            report = bench(args.rows, database_url, args.redis_url, args.batch_size)
        else:
            with throwaway_redis(Path(folder), args.appendfsync) as redis_url:
                report = bench(args.rows, database_url, redis_url, args.batch_size)
                report["appendfsync"] = args.appendfsync
    print(json.dumps(report))


if __name__ == "__main__":
    main()
