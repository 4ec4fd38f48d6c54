"""The response cache shared by two hosts: step 1 and step 2 in separate processes, each with
its own empty data folder (no local disk shared), and a real Redis as FL_PARTNERS_CACHE."""

from __future__ import annotations

import pytest

from .harness import Night
from .redis_server import REDIS_SERVER, REDIS_SERVER_MISSING, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=REDIS_SERVER_MISSING)


def _finish(process, timeout: int = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    return output


def test_step_two_on_another_host_reads_step_ones_answers_from_redis(tiny_dataset, tmp_path):
    night = Night(tiny_dataset, tmp_path)
    try:
        with RedisServer(tmp_path / "redis", password="cache-s3cret") as redis_cache:
            host_one, host_two = tmp_path / "host-1", tmp_path / "host-2"
            first = night.spawn(
                "update_memberships_job",
                host_one / "dagster_home",
                FL_PARTNERS_CACHE=redis_cache.url,
                PARTNERS_DAGSTER_DATA=str(host_one),
            )
            output = _finish(first)
            assert first.returncode == 0, output[-3000:]
            assert sum(night.api.requests.values()) > 0
            night.api.requests.clear()
            second = night.spawn(
                "update_progress_job",
                host_two / "dagster_home",
                FL_PARTNERS_CACHE=redis_cache.url,
                PARTNERS_DAGSTER_DATA=str(host_two),
            )
            output = _finish(second)
            assert second.returncode == 0, output[-3000:]
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
        output = _finish(process, timeout=180)
        assert process.returncode != 0
        assert "FL_PARTNERS_CACHE" in output
        assert "cache-s3cret" not in output
        assert sum(night.api.requests.values()) == 0  # failed before asking the API anything
    finally:
        night.close()
