"""The sandbox API itself: its control endpoints' guards (issue 14, item 17) and the real
JWT contract it holds clients to (item 18). Real HTTP on loopback only."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import jwt
import numpy as np
import pytest
import requests

from partners_dagster.partners_api.tokens import TokenSource
from partners_dagster.sandbox import (
    CONTROL_TOKEN_HEADER,
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    Faults,
    SandboxApi,
    SandboxControl,
    SandboxControlError,
    SandboxServer,
    generate,
)

CONTROL_CALLS = [
    ("GET", "stats", None),
    ("POST", "stats/reset", None),
    ("GET", "faults", None),
    ("PUT", "faults", {"error_rate": 1.0}),
    ("POST", "advance", {"seed": 3}),
]


@pytest.fixture(scope="module")
def own_server():
    """A sandbox of its own: these tests advance its data, which the shared one must not see."""
    with SandboxServer(SandboxApi(generate("tiny", seed=11))) as server:
        yield server


@pytest.fixture
def server(own_server):
    own_server.api.faults = Faults()
    yield own_server
    own_server.api.faults = Faults()


def _token(**claims) -> str:
    now = int(time.time())
    payload = {"iss": DEFAULT_CONSUMER_KEY, "iat": now, "exp": now + 90}
    payload.update(claims)
    return jwt.encode(payload, DEFAULT_CONSUMER_SECRET, algorithm="HS256")


def _runs(url: str, token: str, **headers) -> requests.Response:
    return requests.get(
        f"{url}/partners/course_runs",
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=10,
    )


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- item 17: the control endpoints --------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), CONTROL_CALLS)
@pytest.mark.parametrize("given", [None, "", "a-wrong-token"], ids=["none", "empty", "wrong"])
def test_17_control_endpoints_refuse_a_missing_or_wrong_control_token(
    server, method, path, body, given
):
    headers = {} if given is None else {CONTROL_TOKEN_HEADER: given}
    enrolments_before = server.api.dataset.enrolments.copy()
    response = requests.request(
        method, f"{server.url}/_sandbox/{path}", json=body, headers=headers, timeout=10
    )
    assert response.status_code == 401
    assert CONTROL_TOKEN_HEADER in response.text
    assert server.control_token not in response.text
    # Nothing was changed by the refused request.
    assert server.api.faults == Faults()
    assert server.api.dataset.enrolments.equals(enrolments_before)


def test_17_the_control_client_uses_the_servers_token(server):
    server.control.reset_stats()
    assert _runs(server.url, _token()).status_code == 200
    assert server.control.stats()["requests"] == {"course_runs": 1}
    assert server.control.set_faults(error_rate=1.0)["error_rate"] == 1.0
    assert server.api.faults.error_rate == 1.0
    assert _runs(server.url, _token()).status_code == 500
    assert server.control.set_faults()["error_rate"] == 0.0
    assert server.control.faults() == server.control.set_faults(Faults())
    enrolments_before = server.api.dataset.enrolments.copy()
    assert server.control.advance(seed=2)["new_learners"] > 0
    assert not server.api.dataset.enrolments.equals(enrolments_before)
    # A control client with the wrong token is told so, and never shows a token.
    wrong = SandboxControl(server.url, "not-the-token")
    with pytest.raises(SandboxControlError, match="401") as refused:
        wrong.stats()
    assert "not-the-token" not in str(refused.value) + repr(wrong)
    assert server.control_token not in str(refused.value) + repr(server.control)


def test_17_the_control_token_is_random_per_server_unless_given(tiny_dataset):
    first, second = SandboxApi(tiny_dataset), SandboxApi(tiny_dataset)
    assert first.control_token != second.control_token
    assert len(first.control_token) >= 32
    assert SandboxApi(tiny_dataset, control_token="given").control_token == "given"
    with pytest.raises(ValueError, match="control token"):
        SandboxApi(tiny_dataset, control_token="")


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:80",
        "rebind.attacker.test:{port}",
        "127.0.0.1.evil.example",
        "localhost.evil.example:{port}",
        "10.0.0.1:{port}",
        "[::ffff:7f00:1]:{port}",
        "0.0.0.0:{port}",
        "",
    ],
)
def test_17_a_non_loopback_host_header_is_refused_dns_rebinding(server, host):
    host = host.format(port=server.port)
    control = requests.get(
        f"{server.url}/_sandbox/stats",
        headers={"Host": host, CONTROL_TOKEN_HEADER: server.control_token},
        timeout=10,
    )
    assert control.status_code in (403, 421)
    assert "loopback" in control.text
    put = requests.put(
        f"{server.url}/_sandbox/faults",
        json={"error_rate": 1.0},
        headers={"Host": host, CONTROL_TOKEN_HEADER: server.control_token},
        timeout=10,
    )
    assert put.status_code in (403, 421)
    assert server.api.faults == Faults()
    # The API endpoints too: the sandbox is loopback-only, so nothing else may name it.
    assert _runs(server.url, _token(), Host=host).status_code in (403, 421)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "127.0.0.1", "127.8.9.10:{port}", "localhost:{port}", "LocalHost"]
)
def test_17_a_loopback_host_header_is_served(server, host):
    host = host.format(port=server.port)
    assert _runs(server.url, _token(), Host=host).status_code == 200
    stats = requests.get(
        f"{server.url}/_sandbox/stats",
        headers={"Host": host, CONTROL_TOKEN_HEADER: server.control_token},
        timeout=10,
    )
    assert stats.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "named"),
    [
        pytest.param("PUT", "faults", b"{not json", "not JSON", id="faults-not-json"),
        pytest.param("PUT", "faults", b"[1, 2]", "JSON object", id="faults-an-array"),
        pytest.param(
            "PUT", "faults", b'{"eror_rate": 0.5}', "eror_rate", id="faults-unknown-field"
        ),
        pytest.param(
            "PUT", "faults", b'{"error_rate": "lots"}', "error_rate", id="faults-rate-a-string"
        ),
        pytest.param("PUT", "faults", b'{"error_rate": 2}', "error_rate", id="faults-rate-above-1"),
        pytest.param(
            "PUT", "faults", b'{"latency_ms": -5}', "latency_ms", id="faults-negative-latency"
        ),
        pytest.param("PUT", "faults", b'{"seed": 1.5}', "seed", id="faults-seed-not-integer"),
        pytest.param(
            "PUT", "faults", b'{"script": ["explode"]}', "script", id="faults-unknown-script-fault"
        ),
        pytest.param(
            "PUT", "faults", b'{"script": "error"}', "script", id="faults-script-not-a-list"
        ),
        pytest.param(
            "PUT",
            "faults",
            b'{"failing_runs": [1]}',
            "failing_runs",
            id="faults-failing-run-not-a-string",
        ),
        pytest.param(
            "PUT",
            "faults",
            b'{"overrides": {"/x": {"status": "teapot"}}}',
            "status",
            id="faults-override-bad-status",
        ),
        pytest.param(
            "PUT",
            "faults",
            b'{"overrides": {"/x": {"bdy": ""}}}',
            "/x",
            id="faults-override-unknown-key",
        ),
        pytest.param("PUT", "faults", b"[" * 100_000, "not JSON", id="faults-nested-100000-deep"),
        pytest.param("POST", "advance", b"{not json", "not JSON", id="advance-not-json"),
        pytest.param("POST", "advance", b'{"seed": "x"}', "seed", id="advance-seed-a-string"),
        pytest.param("POST", "advance", b'{"seed": -1}', "seed", id="advance-seed-negative"),
        pytest.param("POST", "advance", b'["seed"]', "seed", id="advance-an-array"),
    ],
)
def test_17_a_bad_control_body_is_a_400_that_says_what_is_wrong(server, method, path, body, named):
    enrolments_before = server.api.dataset.enrolments.copy()
    response = requests.request(
        method,
        f"{server.url}/_sandbox/{path}",
        data=body,
        headers={CONTROL_TOKEN_HEADER: server.control_token, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert named in response.text
    assert f"/_sandbox/{path}" in response.text
    # Nothing changed, and the API still answers (a bad fault never fails a later request).
    assert server.api.faults == Faults()
    assert server.api.dataset.enrolments.equals(enrolments_before)
    assert _runs(server.url, _token()).status_code == 200


def test_17_good_control_bodies_still_work(server):
    headers = {CONTROL_TOKEN_HEADER: server.control_token}
    faults = {
        "error_rate": 0.25,
        "script": ["rate_limit", "token"],
        "failing_runs": ["00000000-0000-4000-8000-000000000000"],
        "overrides": {"/partners/course_runs": {"status": 200, "body": "[]"}},
        "seed": 4,
    }
    put = requests.put(f"{server.url}/_sandbox/faults", json=faults, headers=headers, timeout=10)
    assert put.status_code == 200
    assert {k: put.json()[k] for k in faults} == faults
    assert server.api.faults == Faults(**faults)
    # An empty body: no faults; an empty advance body: seed 1, as before.
    empty = requests.put(f"{server.url}/_sandbox/faults", headers=headers, timeout=10)
    assert (empty.status_code, server.api.faults) == (200, Faults())
    advanced = requests.post(f"{server.url}/_sandbox/advance", headers=headers, timeout=60)
    assert advanced.status_code == 200
    assert advanced.json()["new_learners"] > 0


def test_17_an_empty_consumer_key_or_secret_is_refused_at_construction(tiny_dataset):
    with pytest.raises(ValueError, match="consumer secret must not be empty"):
        SandboxApi(tiny_dataset, consumer_secret="")
    with pytest.raises(ValueError, match="consumer key must not be empty"):
        SandboxApi(tiny_dataset, consumer_key="")


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_17_the_sandbox_listens_on_ipv6_loopback(tiny_dataset):
    with SandboxServer(SandboxApi(tiny_dataset), host="::1") as server:
        assert server.url == f"http://[::1]:{server.port}"
        response = _runs(server.url, _token())
        assert response.status_code == 200
        # The hrefs it renders name the bracketed address the client used.
        assert response.json()[0]["href"].startswith(f"{server.url}/partners/course_runs/")
        assert server.control.stats()["requests"] == {"course_runs": 1}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.org"])
def test_17_the_sandbox_refuses_to_listen_off_loopback(tiny_dataset, host):
    with pytest.raises(ValueError, match="loopback only"):
        SandboxServer(SandboxApi(tiny_dataset), host=host)


def _start_cli(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, dict[str, str]]:
    """``partners-dagster sandbox`` in its own process; the KEY=value lines it printed up to
    and including its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "partners_dagster.tools.cli", "sandbox", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    printed: dict[str, str] = {}
    output = []
    for _, line in zip(range(50), process.stdout, strict=False):  # bounded
        output.append(line)
        key, equals, value = line.strip().partition("=")
        if equals:
            printed[key] = value.split()[0]
        if key == "FL_PARTNERS_URL":
            return process, printed
    process.kill()
    process.wait(timeout=30)
    raise AssertionError(f"the sandbox CLI did not start: {''.join(output)}")


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=30)
    process.stdout.close()


def test_17_the_cli_prints_a_control_token_or_takes_one(tmp_path):
    process, printed = _start_cli("--scale", "tiny")
    try:
        token = printed["PARTNERS_SANDBOX_CONTROL_TOKEN"]
        url = printed["FL_PARTNERS_URL"]
        assert SandboxControl(url, token).stats() == {"requests": {}, "responses": {}, "bytes": {}}
        with pytest.raises(SandboxControlError, match="401"):
            SandboxControl(url, "guessed").stats()
    finally:
        _stop(process)

    given = "a-control-token-chosen-by-the-caller"
    args = ["--scale", "tiny", "--control-token", given]
    if _ipv6_loopback():
        args += ["--host", "::1"]
    process, printed = _start_cli(*args)
    try:
        url = printed["FL_PARTNERS_URL"]
        assert "PARTNERS_SANDBOX_CONTROL_TOKEN" not in printed  # the caller knows it
        if _ipv6_loopback():
            assert url.startswith("http://[::1]:")
        assert SandboxControl(url, given).faults() == json.loads(json.dumps(vars(Faults())))
        with pytest.raises(SandboxControlError, match="401"):
            SandboxControl(url, "guessed").stats()
    finally:
        _stop(process)


# -- item 18: the JWT contract --------------------------------------------------------------

YEARS_10 = 10 * 365 * 86400


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(lambda now: {"exp": now + YEARS_10}, id="exp-in-10-years"),
        pytest.param(lambda now: {"iat": now - YEARS_10, "exp": now + 90}, id="iat-10-years-ago"),
        pytest.param(lambda now: {"exp": str(now + 90)}, id="exp-a-string"),
        pytest.param(lambda now: {"iat": str(now)}, id="iat-a-string"),
        pytest.param(lambda now: {"exp": now + 301}, id="lifetime-301s"),
        pytest.param(
            lambda now: {"iat": now - 290, "exp": now + 20}, id="lifetime-310s-still-unexpired"
        ),
        pytest.param(lambda now: {"iat": now + 120, "exp": now + 210}, id="iat-2-minutes-ahead"),
        pytest.param(lambda now: {"iat": now + 90, "exp": now + 60}, id="exp-before-iat"),
        pytest.param(lambda now: {"iat": True}, id="iat-a-boolean"),
        pytest.param(lambda now: {"exp": [now + 90]}, id="exp-a-list"),
        pytest.param(lambda now: {"exp": None}, id="exp-null"),
    ],
)
def test_18_tokens_the_contract_forbids_are_refused(server, claims):
    response = _runs(server.url, _token(**claims(int(time.time()))))
    assert response.status_code == 401
    # The same request with a contract token is served: the claims alone were refused.
    assert _runs(server.url, _token()).status_code == 200


def test_18_the_projects_own_tokens_and_small_clock_skew_are_accepted(server):
    # What the project's client signs: iat = now, exp = now + 90.
    own = TokenSource(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET).token()
    assert _runs(server.url, own).status_code == 200
    now = int(time.time())
    for claims in (
        {"iat": now, "exp": now + 300},  # the longest lifetime allowed
        {"iat": now + 10, "exp": now + 100},  # our clock a little ahead of the API's
        {"iat": now - 60, "exp": now + 30},  # issued a minute ago, still valid
        {"iat": now + 0.5, "exp": now + 90.5},  # NumericDate may be fractional
    ):
        assert _runs(server.url, _token(**claims)).status_code == 200, claims


# -- issue 26, item 2: the sandbox plays Rails ---------------------------------------------

# Our own fixture: compact JSON with a line break and a non-ASCII letter, as Rails renders it.
# Its ETag was worked out apart from the project's code (`printf '%s' BODY | sha256sum`).
RAILS_FIXTURE = [
    {
        "uuid": "5f1c2e9a-0b7d-4c1e-9a3f-2d6b8e4c7a10",
        "title": "Programmation: café\nPython",
        "weeks_count": 3,
    }
]
RAILS_FIXTURE_ETAG = 'W/"69479eed4f94b77e108446b57bc0cae1"'


def test_26_the_etag_is_racks_the_first_32_hex_digits_of_the_sha256_of_the_compact_body():
    from partners_dagster.sandbox.server import COMPACT_JSON, rails_etag

    body = json.dumps(RAILS_FIXTURE, **COMPACT_JSON).encode()
    assert body == (
        b'[{"uuid":"5f1c2e9a-0b7d-4c1e-9a3f-2d6b8e4c7a10",'
        b'"title":"Programmation: caf\xc3\xa9\\nPython","weeks_count":3}]'
    )
    assert rails_etag(body) == RAILS_FIXTURE_ETAG


@pytest.mark.parametrize(
    "path",
    ["/partners/course_runs", "RUN", "RUN/course_enrolments_report", "MEMBERSHIP"],
)
def test_26_every_200_is_compact_json_with_the_rails_etag_and_cache_control(server, path):
    from partners_dagster.sandbox.server import rails_etag

    dataset = server.api.dataset
    path = path.replace("RUN", f"/partners/course_runs/{dataset.runs['run_uuid'].iat[0]}")
    member = dataset.memberships.query("found")["membership_uuid"].iat[0]
    path = path.replace("MEMBERSHIP", f"/partners/organisation_memberships/{member}")
    response = requests.get(
        server.url + path, headers={"Authorization": f"Bearer {_token()}"}, timeout=10
    )
    assert response.status_code == 200
    assert (
        response.content
        == json.dumps(response.json(), separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert response.headers["ETag"] == rails_etag(response.content)
    assert response.headers["Cache-Control"] == "max-age=0, private, must-revalidate"


def test_26_a_matching_if_none_match_is_a_304_with_no_body_and_a_stale_one_a_200(server):
    first = _runs(server.url, _token())
    etag = first.headers["ETag"]
    server.control.reset_stats()
    again = _runs(server.url, _token(), **{"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
    assert again.headers["Cache-Control"] == "max-age=0, private, must-revalidate"
    listed = _runs(server.url, _token(), **{"If-None-Match": f'W/"0000", {etag}'})
    assert listed.status_code == 304
    stale = _runs(server.url, _token(), **{"If-None-Match": 'W/"00000000000000000000000000000000"'})
    assert (stale.status_code, stale.content) == (200, first.content)
    stats = server.control.stats()
    assert stats["responses"] == {"course_runs 304": 2, "course_runs 200": 1}
    assert stats["bytes"] == {"course_runs": len(first.content)}


# -- issue 26, item 3: a realistic steady night ---------------------------------------------


def _changed_runs(before, after) -> set[int]:
    merged = after.merge(before, on=["run", "membership"], how="left", suffixes=("", "_b"))
    differs = (
        merged["steps_completed_count_b"].isna()
        | (merged["steps_completed_count"] != merged["steps_completed_count_b"])
        | (merged["deactivated"] != merged["deactivated_b"])
    )
    return set(merged.loc[differs, "run"].tolist())


def test_26_the_realistic_night_changes_runs_by_how_recently_they_started():
    from partners_dagster.sandbox.dataset import (
        ACTIVE_HALF_LIFE_DAYS,
        ACTIVE_SHARE,
        NEW_RUN_DAYS,
        advance_night,
        progress_odds,
        run_ages_days,
    )

    realistic, uniform = generate("small", seed=5), generate("small", seed=5)
    ages = run_ages_days(realistic)
    assert ages.min() == 7  # tonight is a week after the newest run started
    odds = progress_odds(realistic, "realistic", 0.05)
    # Halved every two weeks of a run's age.
    assert odds.tolist() == pytest.approx(
        (ACTIVE_SHARE * 0.5 ** (ages / ACTIVE_HALF_LIFE_DAYS)).tolist()
    )
    assert ACTIVE_HALF_LIFE_DAYS == 14 and odds.max() == pytest.approx(ACTIVE_SHARE * 0.5**0.5)
    assert (np.diff(odds[np.argsort(ages)]) <= 0).all()  # never more on an older run

    before = realistic.enrolments.copy()
    changes = advance_night(realistic, 9, model="realistic")
    changed = _changed_runs(before, realistic.enrolments)
    assert changes["model"] == "realistic" and changes["runs_changed"] == len(changed) > 0
    # Few runs change, and the recent ones: none older than a year, most within 10 weeks.
    assert len(changed) < 0.15 * len(realistic.runs)
    assert max(ages[list(changed)]) < 365
    assert np.median(ages[list(changed)]) < 70 < np.median(ages)
    new = realistic.enrolments.merge(before, on=["run", "membership"], how="left")
    new_runs = new.loc[new["steps_completed_count_y"].isna(), "run"].unique()
    assert len(new_runs) and (ages[new_runs] <= NEW_RUN_DAYS).all()

    before = uniform.enrolments.copy()
    advance_night(uniform, 9, model="uniform")
    assert len(_changed_runs(before, uniform.enrolments)) > 0.8 * len(uniform.runs)


def test_26_advance_takes_the_change_model_and_refuses_an_unknown_one(server):
    assert server.control.advance(seed=4, changes="realistic")["model"] == "realistic"
    with pytest.raises(SandboxControlError, match="changes must be one of"):
        server.control.advance(seed=4, changes="everything")
