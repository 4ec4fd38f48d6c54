"""Issue 26, item 1: an answer held past its expiry is revalidated with its ETag; a ``304``
renews it with no body; an unchanged report is neither downloaded nor parsed again (in step 1
after a ``304``, in step 2 from the cache), a changed one is. On the sandbox over real HTTP,
with the SQLite cache file and a real Redis."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import fields

import numpy as np
import pytest
import redis
import requests

from partners_dagster.partners_api import cache as cache_module
from partners_dagster.partners_api.endpoints import COURSE_RUNS, ENROLMENTS_REPORT
from partners_dagster.partners_api.records import (
    TABLE_MAGIC,
    EnrolmentTable,
    TableFormatError,
    enrolment_table,
    parse_enrolment_report,
)
from partners_dagster.partners_api.tokens import TokenSource
from partners_dagster.sandbox import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    SandboxApi,
    SandboxServer,
    generate,
)

from .conftest import cleared
from .redis_server import REDIS_SERVER, REDIS_SERVER_MISSING, RedisServer


# A sandbox and dataset of this module's own: these tests count every request and parse,
# and nothing another test file did to the session's shared sandbox may reach them.
@pytest.fixture(scope="module")
def tiny_dataset():
    return generate("tiny", seed=7)


@pytest.fixture(scope="module")
def own_server(tiny_dataset):
    with SandboxServer(SandboxApi(tiny_dataset)) as server:
        yield server


@pytest.fixture
def sandbox(own_server):
    """This module's sandbox, cleared for one test (``make_client`` talks to it)."""
    yield from cleared(own_server)


EXPIRY = 1  # seconds: a "night" passes in a test
REDIS_EXPIRY = 3  # a round trip to Redis per report: two clients read within it


def _responses(sandbox, endpoint: str) -> dict[int, int]:
    return {s: n for (e, s), n in sandbox.api.responses.items() if e == endpoint}


def _counts(client, endpoint: str = ENROLMENTS_REPORT) -> dict[str, int]:
    return client.stats.snapshot()[endpoint]


def _tables(client, run_uuids) -> dict[str, EnrolmentTable]:
    results = dict(client.enrolment_tables(run_uuids))
    assert all(isinstance(t, EnrolmentTable) for t in results.values()), results
    return results


def _same(a: EnrolmentTable, b: EnrolmentTable) -> bool:
    """The same run and the same values in every column (each of the table's arrays)."""
    columns = [f.name for f in fields(EnrolmentTable) if isinstance(getattr(a, f.name), np.ndarray)]
    assert len(columns) == 6, columns
    return a.run_uuid == b.run_uuid and all(
        np.array_equal(getattr(a, name), getattr(b, name), equal_nan=name.endswith("_at"))
        for name in columns
    )


def test_a_304_renews_an_expired_answer_with_no_body(sandbox, make_client):
    client = make_client(cache_expiry_seconds=EXPIRY)
    runs, _ = client.course_runs()
    time.sleep(EXPIRY + 0.2)
    sandbox.api.bytes_sent.clear()
    assert client.course_runs()[0] == runs
    assert _responses(sandbox, COURSE_RUNS) == {200: 1, 304: 1}
    assert sandbox.api.bytes_sent[COURSE_RUNS] == 0, "a 304 sends no body"
    assert _counts(client, COURSE_RUNS) | {"parses": 0} == {
        "network": 2,
        "not_modified": 1,
        "cache_hits": 0,
        "parses": 0,
        "retries": 0,
        "failures": 0,
    }
    # Renewed: for another expiry period it is a cache hit, no request at all.
    assert client.course_runs()[0] == runs
    assert _responses(sandbox, COURSE_RUNS) == {200: 1, 304: 1}
    assert _counts(client, COURSE_RUNS)["cache_hits"] == 1


def test_an_unchanged_report_is_neither_downloaded_nor_parsed_the_next_night(
    sandbox, make_client, tiny_dataset
):
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()
    first = make_client(cache_expiry_seconds=EXPIRY)
    tonight = _tables(first, run_uuids)
    assert _counts(first)["parses"] == len(run_uuids)
    time.sleep(EXPIRY + 0.2)

    sandbox.api.bytes_sent.clear()
    next_night = make_client(cache_expiry_seconds=EXPIRY)  # a new process, the same cache file
    again = _tables(next_night, run_uuids)
    assert _responses(sandbox, ENROLMENTS_REPORT) == {200: len(run_uuids), 304: len(run_uuids)}
    assert sandbox.api.bytes_sent[ENROLMENTS_REPORT] == 0
    assert _counts(next_night)["not_modified"] == len(run_uuids)
    assert _counts(next_night)["parses"] == 0
    assert all(_same(again[u], tonight[u]) for u in run_uuids)


def test_step_two_reads_step_ones_reports_from_the_cache_without_parsing_them(
    sandbox, make_client, tiny_dataset
):
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()
    step_1 = _tables(make_client(), run_uuids)
    step_2_client = make_client()
    step_2 = _tables(step_2_client, run_uuids)
    assert _counts(step_2_client) | {"retries": 0} == {
        "network": 0,
        "not_modified": 0,
        "cache_hits": len(run_uuids),
        "parses": 0,
        "retries": 0,
        "failures": 0,
    }
    assert all(_same(step_2[u], step_1[u]) for u in run_uuids)


def test_a_changed_report_is_downloaded_and_parsed(sandbox, make_client, tiny_dataset):
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()
    changed = run_uuids[3]
    tonight = _tables(make_client(cache_expiry_seconds=EXPIRY), run_uuids)
    # Tomorrow one learner has done one more step on that run.
    path = f"/partners/course_runs/{changed}/course_enrolments_report"
    token = TokenSource(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET).token()
    report = requests.get(
        sandbox.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    assert report, "the changed run needs enrolments"
    report[0]["steps_completed_count"] += 1
    body = json.dumps(report, separators=(",", ":"))
    sandbox.api.faults.overrides = {path: {"body": body}}
    time.sleep(EXPIRY + 0.2)
    sandbox.api.responses.clear()

    next_night = make_client(cache_expiry_seconds=EXPIRY)
    again = _tables(next_night, run_uuids)
    assert _responses(sandbox, ENROLMENTS_REPORT) == {200: 1, 304: len(run_uuids) - 1}
    assert _counts(next_night)["parses"] == 1
    assert again[changed].steps_completed_count[0] == tonight[changed].steps_completed_count[0] + 1
    expected = enrolment_table(
        parse_enrolment_report(
            changed, report, endpoint=ENROLMENTS_REPORT, status=200, raw=body.encode()
        )
    )
    assert _same(again[changed], expected)
    assert all(_same(again[u], tonight[u]) for u in run_uuids if u != changed)


def test_a_parsed_report_round_trips_as_numpy_columns_without_pickle(
    sandbox, make_client, tiny_dataset
):
    (table,) = _tables(make_client(), tiny_dataset.runs["run_uuid"].tolist()[:1]).values()
    data = table.to_bytes()
    assert data.startswith(TABLE_MAGIC)  # a JSON header, then raw numpy columns: no objects
    assert b"pickle" not in data and b"\x80\x04" not in data[:64]
    assert _same(EnrolmentTable.from_bytes(data), table)
    for damaged in (data[:-1], data + b"x", b"PK" + data[2:], data.replace(b"|S36", b"|O36")):
        with pytest.raises(TableFormatError):
            EnrolmentTable.from_bytes(damaged)
    assert len(data) < 0.6 * sandbox.api.bytes_sent[ENROLMENTS_REPORT]


def test_answers_unused_long_past_their_expiry_leave_the_sqlite_cache_the_others_stay(
    sandbox, make_client, tiny_dataset, monkeypatch
):
    """Expired answers stay, to be revalidated; only those unused for STALE_KEEP_SECONDS
    past their expiry go, with their parsed forms, before a client's first batch."""
    keep = 6  # wide margins: a loaded machine may take seconds between two steps
    monkeypatch.setattr(cache_module, "STALE_KEEP_SECONDS", keep)
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()
    first = make_client(cache_expiry_seconds=EXPIRY)
    _tables(first, run_uuids[1:])
    first.close()  # its connections gone: nothing of it can hold the cache file's lock
    with sqlite3.connect(first._backend.db_path) as connection:
        (last_expiry,) = connection.execute("SELECT max(expires) FROM responses").fetchone()
    # Until run_uuids[1:] have gone unused for longer than kept past their (latest) expiry:
    # on a loaded machine the batch itself may take seconds.
    time.sleep(max(0.0, last_expiry + keep + 0.5 - time.time()))
    client = make_client(cache_expiry_seconds=EXPIRY)
    _tables(client, run_uuids[:1])
    assert client._backend.responses.count() == 1
    with sqlite3.connect(client._backend.db_path) as connection:
        (parsed,) = connection.execute("SELECT count(*) FROM parsed_reports").fetchone()
    assert parsed == 1

    time.sleep(EXPIRY + 0.2)  # expired, but for less than kept: it stays, and is revalidated
    sandbox.api.responses.clear()
    late = make_client(cache_expiry_seconds=EXPIRY)
    _tables(late, run_uuids[:1])
    assert _responses(sandbox, ENROLMENTS_REPORT) == {304: 1}
    assert _counts(late)["parses"] == 0


@pytest.mark.skipif(REDIS_SERVER is None, reason=REDIS_SERVER_MISSING)
def test_with_the_shared_redis_a_304_renews_and_nothing_is_parsed_twice(
    sandbox, make_client, tiny_dataset, tmp_path
):
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()
    with RedisServer(tmp_path / "redis", password="cache-s3cret") as redis_cache:
        host_1 = make_client(cache=redis_cache.url, cache_expiry_seconds=REDIS_EXPIRY)
        tonight = _tables(host_1, run_uuids)
        assert _counts(host_1)["parses"] == len(run_uuids)
        host_2 = make_client(cache=redis_cache.url, cache_expiry_seconds=REDIS_EXPIRY)
        assert all(_same(t, tonight[u]) for u, t in _tables(host_2, run_uuids).items())
        assert _counts(host_2)["cache_hits"] == len(run_uuids)
        assert _counts(host_2)["parses"] == 0

        time.sleep(REDIS_EXPIRY + 0.2)
        sandbox.api.responses.clear()
        next_night = make_client(cache=redis_cache.url, cache_expiry_seconds=REDIS_EXPIRY)
        again = _tables(next_night, run_uuids)
        assert _responses(sandbox, ENROLMENTS_REPORT) == {304: len(run_uuids)}
        assert _counts(next_night)["parses"] == 0
        assert all(_same(again[u], tonight[u]) for u in run_uuids)
        # Kept past their expiry (to be revalidated), but not for ever.
        connection = redis.Redis.from_url(redis_cache.url)
        ttls = [connection.ttl(k) for k in connection.scan_iter("partners_api:*")]
        connection.close()
        assert ttls and all(0 < t <= cache_module.STALE_KEEP_SECONDS + REDIS_EXPIRY for t in ttls)
