"""The client against the sandbox API over real HTTP on loopback."""

from __future__ import annotations

import threading
import time

import jwt
import pytest
import requests

from partners_dagster.partners_api import (
    ApiUnavailableError,
    MalformedResponseError,
    NotFoundError,
    UnauthorizedError,
)
from partners_dagster.partners_api.endpoints import ENROLMENTS_REPORT
from partners_dagster.partners_api.tokens import TokenSource
from partners_dagster.sandbox import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, Faults

SECRET = "a-test-secret-of-at-least-thirty-two-bytes"


def _requests(sandbox, endpoint=None) -> int:
    counts = sandbox.api.requests
    return counts[endpoint] if endpoint else sum(counts.values())


def test_token_is_reused_then_renewed_before_expiry():
    now = [1_000_000.0]
    tokens = TokenSource("key", SECRET, clock=lambda: now[0])
    first = tokens.token()
    claims = jwt.decode(
        first, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims == {"iss": "key", "iat": 1_000_000, "exp": 1_000_090}
    now[0] += 59
    assert tokens.token() == first
    now[0] += 2  # 61 s old: within the renewal margin of its 90 s life
    second = tokens.token()
    assert second != first
    # Over an hour, every token handed out is valid for at least the margin.
    for _ in range(3600):
        now[0] += 1
        token = tokens.token()
        exp = jwt.decode(
            token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
        )["exp"]
        assert exp - now[0] >= 30
    assert tokens.tokens_made == 2 + 3600 // 60


def test_reads_every_endpoint_and_second_read_is_served_from_cache_but_memberships(
    sandbox, make_client, tiny_dataset
):
    client = make_client()
    runs, rejections = client.course_runs()
    assert rejections == [] and len(runs) == len(tiny_dataset.runs)
    run = client.course_run(runs[0].uuid)
    assert run == runs[0]
    report = client.enrolment_report(runs[0].uuid)
    assert len(report.enrolments) == len(tiny_dataset.enrolments_of_run(0))
    member_uuid = tiny_dataset.memberships.query("found")["membership_uuid"].iat[0]
    membership = client.organisation_membership(member_uuid)
    assert membership.uuid == member_uuid
    assert _requests(sandbox) == 4

    again = make_client()  # a new process-like client sharing the cache file
    assert again.course_runs()[0] == runs
    assert again.course_run(runs[0].uuid) == run
    assert again.enrolment_report(runs[0].uuid) == report
    assert _requests(sandbox) == 4, "the second read must not touch the network"
    # A membership is asked again: its answer is kept in the membership memory, not here.
    assert again.organisation_membership(member_uuid) == membership
    assert _requests(sandbox) == 5
    assert {e: c["cache_hits"] for e, c in again.stats.snapshot().items()} == {
        "course_runs": 1,
        "course_run": 1,
        "course_enrolments_report": 1,
        "organisation_membership": 0,
    }
    assert again.stats.total("network") == 1


def test_cache_expiry_is_ours_not_the_servers(sandbox, make_client):
    client = make_client(cache_expiry_seconds=1)
    client.course_runs()
    client.course_runs()
    assert _requests(sandbox, "course_runs") == 1
    time.sleep(1.2)
    client.course_runs()
    assert _requests(sandbox, "course_runs") == 2


def test_no_token_or_secret_in_the_cache_file(sandbox, make_client, tmp_path):
    client = make_client()
    runs, _ = client.course_runs()
    for run in runs[:3]:
        client.enrolment_report(run.uuid)
    token = client.tokens.token()
    data = b"".join(path.read_bytes() for path in tmp_path.glob("cache.sqlite3*"))
    assert len(data) > 10_000
    assert runs[0].uuid.encode() in data  # the grep below can find what is there
    assert DEFAULT_CONSUMER_SECRET.encode() not in data
    assert token.encode() not in data
    assert token.split(".")[1].encode() not in data  # not even the claims part


def test_404_is_a_distinct_not_found_error(sandbox, make_client, tiny_dataset):
    client = make_client()
    missing = tiny_dataset.memberships.query("not found")["membership_uuid"].iat[0]
    for _ in range(2):
        with pytest.raises(NotFoundError) as raised:
            client.organisation_membership(missing)
        assert raised.value.status == 404
    # Neither a membership's 404 (the membership memory keeps that answer) ...
    assert _requests(sandbox, "organisation_membership") == 2
    assert client.stats.snapshot()["organisation_membership"]["cache_hits"] == 0
    # ... nor a run's is kept in the response cache: each is asked again.
    for _ in range(2):
        with pytest.raises(NotFoundError):
            client.enrolment_report("00000000-0000-4000-8000-000000000000")
    assert _requests(sandbox, "course_enrolments_report") == 2


def test_an_expired_token_is_renewed_and_the_request_retried(sandbox, make_client):
    client = make_client()
    stale = jwt.encode(
        {"iss": DEFAULT_CONSUMER_KEY, "iat": 1, "exp": 91},
        DEFAULT_CONSUMER_SECRET,
        algorithm="HS256",
    )
    client.tokens._token, client.tokens._expires_at = (
        stale,
        time.time() + 3600,
    )  # as if our clock were wrong
    runs, _ = client.course_runs()
    assert runs
    assert sandbox.api.responses[("course_runs", 401)] == 1
    assert sandbox.api.responses[("course_runs", 200)] == 1
    assert client.tokens.token() != stale


def test_tokens_rejected_early_are_retried(sandbox, make_client):
    sandbox.api.faults = Faults(script=["token", "token"])
    client = make_client()
    assert client.course_runs()[0]
    assert _requests(sandbox) == 3


def test_three_refusals_give_a_clear_failure(sandbox, make_client):
    client = make_client(consumer_secret="the-wrong-secret-that-is-long-enough-for-hs256")
    with pytest.raises(
        UnauthorizedError, match="token refused 3 times.*FL_PARTNERS_CONSUMER_SECRET"
    ):
        client.course_runs()
    assert _requests(sandbox) == 3
    assert "the-wrong-secret-that-is-long-enough-for-hs256" not in repr(client)


def test_429_waits_for_retry_after(sandbox, make_client):
    sandbox.api.faults = Faults(script=["rate_limit"], retry_after_seconds=0.6)
    client = make_client()
    started = time.monotonic()
    client.course_runs()
    assert time.monotonic() - started >= 0.6
    assert client.stats.snapshot()["course_runs"]["retries"] == 1


def test_500s_drops_and_slow_responses_are_retried(sandbox, make_client):
    sandbox.api.faults = Faults(script=["error", "drop", "slow", "error"], slow_seconds=1.5)
    client = make_client(read_timeout=0.5)
    runs, _ = client.course_runs()
    assert runs
    assert client.stats.snapshot()["course_runs"]["retries"] == 4
    assert _requests(sandbox) == 5


def test_retries_are_bounded(sandbox, make_client):
    sandbox.api.faults = Faults(error_rate=1.0)
    client = make_client(max_attempts=4)
    with pytest.raises(ApiUnavailableError, match="course_runs: gave up after 4 attempts"):
        client.course_runs()
    assert _requests(sandbox) == 4


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        ("text/html", "<html><body>Maintenance</body></html>", "Content-Type is 'text/html"),
        ("application/json", '[{"uuid": "545ba924-9e7', "not valid JSON"),
        ("application/json", '{"error": "oops"}', "expected a JSON array, got dict"),
    ],
)
def test_malformed_bodies_give_a_clear_error_and_are_not_cached(
    sandbox, make_client, content_type, body, reason
):
    sandbox.api.faults = Faults(
        overrides={"/partners/course_runs": {"content_type": content_type, "body": body}}
    )
    client = make_client()
    with pytest.raises(MalformedResponseError) as raised:
        client.course_runs()
    message = str(raised.value)
    assert message.startswith("course_runs: malformed response (HTTP 200)")
    assert reason in message and body[:20] in message
    sandbox.api.faults = Faults()
    assert client.course_runs()[0], "a good answer replaces the bad one"
    assert _requests(sandbox) == 2


def test_concurrent_fetches_return_every_report_once(sandbox, make_client, tiny_dataset):
    client = make_client(max_concurrency=4)
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()
    results = dict(client.enrolment_reports(run_uuids))
    assert set(results) == set(run_uuids)
    for index, run_uuid in enumerate(run_uuids):
        expected = tiny_dataset.enrolments_of_run(index)
        report = results[run_uuid]
        assert len(report.enrolments) == len(expected)
        assert {e.membership_uuid for e in report.enrolments} == set(
            tiny_dataset.memberships["membership_uuid"].to_numpy()[
                expected["membership"].to_numpy()
            ]
        )
    assert _requests(sandbox, "course_enrolments_report") == len(run_uuids)
    assert dict(client.enrolment_reports(run_uuids)).keys() == results.keys()
    assert _requests(sandbox, "course_enrolments_report") == len(run_uuids)


def test_reports_the_cache_holds_are_read_first_on_the_calling_thread_the_rest_on_the_pool(
    sandbox, make_client, tiny_dataset
):
    """Threads only slow a read that waits on no network: the fresh answers the cache holds
    are read in order on the calling thread, and only the others reach the pool and the API.
    An expired answer is not among the first."""
    client = make_client(max_concurrency=4, cache_expiry_seconds=2)
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()
    warm = run_uuids[::2]
    for run_uuid in warm:
        client.enrolment_report(run_uuid)
    served_on: dict[str, threading.Thread] = {}

    def fetch(run_uuid):
        served_on[run_uuid] = threading.current_thread()
        return client.enrolment_report(run_uuid)

    answered = [key for key, _ in client.fetch_many(run_uuids, fetch, ENROLMENTS_REPORT)]
    assert answered[: len(warm)] == warm and sorted(answered) == sorted(run_uuids)
    assert {u for u, t in served_on.items() if t is threading.main_thread()} == set(warm)
    assert _requests(sandbox, "course_enrolments_report") == len(run_uuids)
    assert client.stats.snapshot()["course_enrolments_report"]["cache_hits"] == len(warm)

    time.sleep(2.2)  # every answer is now past the cache expiry
    served_on.clear()
    assert len(dict(client.fetch_many(run_uuids, fetch, ENROLMENTS_REPORT))) == len(run_uuids)
    assert threading.main_thread() not in served_on.values()
    assert _requests(sandbox, "course_enrolments_report") == 2 * len(run_uuids)


def test_while_a_batch_waits_on_its_caller_the_callers_own_requests_reach_the_network(
    sandbox, make_client, tiny_dataset
):
    """The cache-only reading of a batch is off whenever the batch hands an answer, or an
    error, back to its caller: what the caller asks meanwhile is an ordinary request."""
    client = make_client()
    run_uuid = tiny_dataset.runs["run_uuid"].iat[0]

    def fetch(key):
        raise NotFoundError(f"no report {key}", endpoint=ENROLMENTS_REPORT, status=404)

    (result,) = [
        (answer, client.enrolment_report(run_uuid))
        for _, answer in client.fetch_many(["gone"], fetch, ENROLMENTS_REPORT)
    ]
    assert isinstance(result[0], NotFoundError) and result[1].run_uuid == run_uuid
    assert _requests(sandbox, "course_enrolments_report") == 1


def test_one_failing_report_does_not_stop_the_others(sandbox, make_client, tiny_dataset):
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()
    sandbox.api.faults = Faults(failing_runs=[run_uuids[1]])
    client = make_client(max_attempts=2)
    results = dict(client.enrolment_reports(run_uuids))
    assert isinstance(results[run_uuids[1]], ApiUnavailableError)
    assert all(not isinstance(r, Exception) for u, r in results.items() if u != run_uuids[1])


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(
            {"iss": DEFAULT_CONSUMER_KEY, "iat": int(time.time()), "exp": int(time.time()) + 90},
            "a-wrong-secret-that-is-long-enough-for-hs256",
            algorithm="HS256",
        ),
        jwt.encode(
            {"iss": "someone-else", "iat": int(time.time()), "exp": int(time.time()) + 90},
            DEFAULT_CONSUMER_SECRET,
            algorithm="HS256",
        ),
        jwt.encode(
            {
                "iss": DEFAULT_CONSUMER_KEY,
                "iat": int(time.time()) - 200,
                "exp": int(time.time()) - 100,
            },
            DEFAULT_CONSUMER_SECRET,
            algorithm="HS256",
        ),
        jwt.encode(
            {"iss": DEFAULT_CONSUMER_KEY, "iat": int(time.time()), "exp": int(time.time()) + 90},
            None,
            algorithm="none",
        ),
        jwt.encode(
            {"iss": DEFAULT_CONSUMER_KEY, "iat": int(time.time())},
            DEFAULT_CONSUMER_SECRET,
            algorithm="HS256",
        ),
    ],
    ids=["wrong-signature", "wrong-issuer", "expired", "alg-none", "no-exp"],
)
def test_sandbox_refuses_bad_tokens(sandbox, token):
    response = requests.get(
        f"{sandbox.url}/partners/course_runs",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert response.status_code == 401
    good = jwt.encode(
        {"iss": DEFAULT_CONSUMER_KEY, "iat": int(time.time()), "exp": int(time.time()) + 90},
        DEFAULT_CONSUMER_SECRET,
        algorithm="HS256",
    )
    assert (
        requests.get(
            f"{sandbox.url}/partners/course_runs",
            headers={"Authorization": f"Bearer {good}"},
            timeout=5,
        ).status_code
        == 200
    )


def test_sandbox_answers_with_the_recorded_headers(sandbox):
    token = jwt.encode(
        {"iss": DEFAULT_CONSUMER_KEY, "iat": int(time.time()), "exp": int(time.time()) + 90},
        DEFAULT_CONSUMER_SECRET,
        algorithm="HS256",
    )
    headers = {"Authorization": f"Bearer {token}"}
    ok = requests.get(f"{sandbox.url}/partners/course_runs", headers=headers, timeout=5)
    assert ok.headers["Cache-Control"] == "max-age=0, private, must-revalidate"
    assert ok.headers["ETag"].startswith('W/"')
    assert ok.headers["Content-Type"].startswith("application/json")
    missing = requests.get(
        f"{sandbox.url}/partners/organisation_memberships/wrong", headers=headers, timeout=5
    )
    assert (missing.status_code, missing.json(), missing.headers["Cache-Control"]) == (
        404,
        {"error": "not_found"},
        "no-cache",
    )
