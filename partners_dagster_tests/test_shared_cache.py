"""The response cache shared by two hosts: step 1 and step 2 in separate processes, each with
its own empty data folder (no local disk shared), and a real Redis as FL_PARTNERS_CACHE."""

from __future__ import annotations

import pytest

from .harness import Night
from .redis_server import REDIS_SERVER, REDIS_SERVER_MISSING, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=REDIS_SERVER_MISSING)


def _run_on_host(night: Night, job: str, host, cache_url: str) -> None:
    """``job`` in its own process, with a data folder and Dagster home of its own."""
    process = night.spawn(
        job, host / "dagster_home", FL_PARTNERS_CACHE=cache_url, PARTNERS_DAGSTER_DATA=str(host)
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]


def test_step_two_on_another_host_reads_step_ones_answers_from_redis(tiny_dataset, tmp_path):
    night = Night(tiny_dataset, tmp_path)
    try:
        with RedisServer(tmp_path / "redis", password="cache-s3cret") as redis_cache:
            _run_on_host(night, "update_memberships_job", tmp_path / "host-1", redis_cache.url)
            assert sum(night.api.requests.values()) > 0
            night.api.requests.clear()
            _run_on_host(night, "update_progress_job", tmp_path / "host-2", redis_cache.url)
            # Every answer step 2 needed came from Redis: no network request at all.
            assert sum(night.api.requests.values()) == 0
            assert night.query("SELECT count(*) AS n FROM achievements")["n"].iat[0] > 0
            # Neither host kept a cache file of its own.
            assert not list(tmp_path.glob("host-*/**/*cache*.sqlite3*"))
    finally:
        night.close()


def test_a_redis_cache_that_is_down_fails_the_run_at_once_naming_the_variable(
    tiny_dataset, tmp_path
):
    night = Night(tiny_dataset, tmp_path)
    try:
        down = RedisServer(tmp_path / "redis", password="cache-s3cret")  # never started
        process = night.spawn(
            "update_memberships_job", tmp_path / "home", FL_PARTNERS_CACHE=down.url
        )
        output, _ = process.communicate(timeout=180)
        assert process.returncode != 0
        assert "FL_PARTNERS_CACHE" in output
        assert "cache-s3cret" not in output
        assert sum(night.api.requests.values()) == 0  # failed before asking the API anything
    finally:
        night.close()
