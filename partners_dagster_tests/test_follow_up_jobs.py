"""follow_up_jobs, the last step of update_progress_job, on a real Redis: every outbox row
reaches Sidekiq's queue or schedule once, earlier nights' rows included, and a Redis outage
fails the step by name while the rows wait for the next run."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import insert

from partners_dagster.teachcomputing.models import OutboxJob
from partners_dagster.tools.cli import main

from .harness import Night, check_metadata, check_results, materialization_metadata
from .redis_server import REDIS_SERVER, REDIS_SERVER_MISSING, RedisServer
from .test_sidekiq_delivery import register_sidekiq_process

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=REDIS_SERVER_MISSING)


def _pushed(client: redis.Redis) -> Counter:
    """Job class -> how many payloads Redis holds (queue and schedule)."""
    payloads = client.lrange("queue:default", 0, -1) + client.zrange("schedule", 0, -1)
    return Counter(json.loads(p)["wrapped"] for p in payloads)


@pytest.fixture
def sidekiq_redis(tmp_path):
    with RedisServer(tmp_path / "redis", password="s3cret-sidekiq") as server:
        yield server


def test_every_outbox_row_reaches_sidekiq_once(tiny_dataset, tmp_path, sidekiq_redis):
    night = Night(tiny_dataset, tmp_path, sidekiq_redis_url=sidekiq_redis.url)
    try:
        client = redis.Redis.from_url(sidekiq_redis.url)
        register_sidekiq_process(client)  # the website's Sidekiq reads this Redis
        _, progress = night.both_steps()
        outbox = night.repository().outbox()
        assert len(outbox) > 0 and outbox["dispatched_at"].notna().all()
        assert _pushed(client) == Counter(outbox["job_class"])
        assert set(outbox["jid"]) == {
            json.loads(p)["jid"]
            for p in client.lrange("queue:default", 0, -1) + client.zrange("schedule", 0, -1)
        }
        delivered = materialization_metadata(progress, "follow_up_jobs")
        assert delivered["delivered"] == len(outbox) and delivered["waiting"] == 0
        assert check_results(progress)["outbox_drained"] is True
        # A second night queues nothing new and pushes nothing again.
        again = night.run("update_progress_job")
        assert _pushed(client) == Counter(outbox["job_class"])
        assert materialization_metadata(again, "follow_up_jobs")["delivered"] == 0
    finally:
        night.close()


def test_a_redis_no_sidekiq_reads_warns_naming_the_variable_and_fails_outbox_drained(
    tiny_dataset, tmp_path, sidekiq_redis
):
    # Database 7 of the website's Redis: reachable, but no Sidekiq process reads it.
    night = Night(tiny_dataset, tmp_path, sidekiq_redis_url=sidekiq_redis.url_for_db(7))
    try:
        _, progress = night.both_steps()
        assert check_results(progress)["outbox_drained"] is False
        metadata = materialization_metadata(progress, "follow_up_jobs")
        assert metadata["delivered"] > 0 and metadata["sidekiq_processes"] == 0
        (problem,) = check_metadata(progress, "outbox_drained")["problems"]
        assert "TEACHCOMPUTING_SIDEKIQ_REDIS_URL" in problem
        warnings = [
            record.user_message
            for record in night.instance.all_logs(progress.run_id)
            if record.level == logging.WARNING
        ]
        assert any(
            "TEACHCOMPUTING_SIDEKIQ_REDIS_URL" in w and "No Sidekiq process" in w for w in warnings
        ), warnings
        assert not any("s3cret-sidekiq" in w for w in warnings)
    finally:
        night.close()


def test_a_row_set_aside_is_reported_and_fails_outbox_drained(
    tiny_dataset, tmp_path, sidekiq_redis
):
    night = Night(tiny_dataset, tmp_path, sidekiq_redis_url=sidekiq_redis.url)
    try:
        register_sidekiq_process(redis.Redis.from_url(sidekiq_redis.url))
        night.run("update_memberships_job")
        with night.engine.begin() as connection:
            connection.execute(
                insert(OutboxJob),
                [{"job_class": "IssueBadgeJob", "queue": "default", "dedup_key": "bad",
                  "arguments": {"achievement_id": "x"}, "run_at": datetime.now(UTC),
                  "created_at": datetime.now(UTC)}],
            )  # fmt: skip
        progress = night.run("update_progress_job")
        assert check_results(progress)["outbox_drained"] is False
        metadata = materialization_metadata(progress, "follow_up_jobs")
        assert metadata["delivered"] > 0
        assert (metadata["set_aside"], metadata["set_aside_total"]) == (1, 1)
        (error,) = metadata["set_aside_errors"].values()
        assert "arguments must be a JSON list, got dict" in error
        assert night.repository().outbox_waiting()[0] == 0
    finally:
        night.close()


def test_without_a_redis_url_the_jobs_wait_and_are_counted(night):
    _, progress = night.both_steps()
    waiting = night.repository().outbox(pending_only=True)
    metadata = materialization_metadata(progress, "follow_up_jobs")
    assert metadata["waiting"] == len(waiting) > 0
    assert metadata["delivered"] == 0 and metadata["sidekiq_configured"] is False
    # Not a day old yet, but no Sidekiq is set to take them: a warning (issue 24).
    assert check_results(progress)["outbox_drained"] is False
    listed = CliRunner().invoke(main, ["outbox", "--pending", "--database-url", night.database_url])
    assert listed.exit_code == 0, listed.output
    assert f"waiting {len(waiting)}" in listed.output
    assert "IssueBadgeJob" in listed.output


def test_a_redis_outage_fails_the_step_by_name_and_the_next_run_delivers(
    tiny_dataset, tmp_path, sidekiq_redis
):
    night = Night(tiny_dataset, tmp_path, sidekiq_redis_url=sidekiq_redis.url)
    try:
        night.run("update_memberships_job")
        sidekiq_redis.stop()
        failed = night.run("update_progress_job", raise_on_error=False)
        assert not failed.success
        message = "".join(
            str(e.step_failure_data.error) for e in failed.all_events if e.is_step_failure
        )
        assert "TEACHCOMPUTING_SIDEKIQ_REDIS_URL" in message
        assert "s3cret-sidekiq" not in message
        # Progress already written stays; the jobs wait.
        waiting = night.repository().outbox(pending_only=True)
        assert len(waiting) > 0
        assert night.query("SELECT count(*) AS n FROM achievement_transitions")["n"].iat[0] > 0
        sidekiq_redis.start()
        night.run("update_progress_job")
        assert night.repository().outbox(pending_only=True).empty
        client = redis.Redis.from_url(sidekiq_redis.url)
        assert _pushed(client) == Counter(night.repository().outbox()["job_class"])
    finally:
        night.close()
