"""The Partners API client against hostile and broken servers (issue 14).

Each test is named after the issue's item it proves. The misbehaving servers are small
throwaway servers on 127.0.0.1 written here; every loop they run is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
import requests_cache

from partners_dagster import settings
from partners_dagster.partners_api import (
    ApiUnavailableError,
    MalformedResponseError,
    PartnersApiClient,
    PartnersApiError,
    UnauthorizedError,
)
from partners_dagster.partners_api.errors import DeadlineExceededError, ResponseTooLargeError
from partners_dagster.partners_api.records import RecordError, parse_enrolment_report, timestamp
from partners_dagster.partners_api.resource import PartnersApiResource
from partners_dagster.sandbox import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, Faults
from partners_dagster.settings import ConfigurationError
from partners_dagster.steps.course_reports import course_runs_frame, fetch_course_enrolments

# -- throwaway servers ---------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self.server.behaviour(self, self.server.stop)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[Callable[[Callable], str]]:
    """Start a server whose every GET is answered by ``behaviour(handler, stop_event)``;
    returns its base URL. The server's ``seen`` lists (path, Authorization) per request."""
    servers: list[ThreadingHTTPServer] = []

    def start(behaviour: Callable) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.behaviour = behaviour
        server.stop = threading.Event()
        server.seen = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    start.servers = servers
    yield start
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


def _client(base_url: str, tmp_path, **options) -> PartnersApiClient:
    defaults = {
        "cache": str(tmp_path / "cache.sqlite3"),
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "read_timeout": 5.0,
        "max_attempts": 2,
    }
    return PartnersApiClient(
        base_url, DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, **{**defaults, **options}
    )


def _cache_bytes(tmp_path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(tmp_path.glob("cache.sqlite3*")))


def _cached_entries(tmp_path) -> int:
    backend = requests_cache.SQLiteCache(tmp_path / "cache.sqlite3")
    try:
        return len(backend.responses)
    finally:
        backend.close()


def _sandbox_json(sandbox, path: str):
    now = int(time.time())
    token = jwt.encode(
        {"iss": DEFAULT_CONSUMER_KEY, "iat": now, "exp": now + 90},
        DEFAULT_CONSUMER_SECRET,
        algorithm="HS256",
    )
    response = requests.get(
        sandbox.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    response.raise_for_status()
    return response.json()


# -- item 1: a timestamp pandas cannot hold ------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "2262-04-12T00:00:00Z",
    ],
)
def test_item01_timestamp_outside_pandas_range_is_a_record_error(value):
    with pytest.raises(RecordError, match="out of range"):
        timestamp(value, "activated_at")
    assert timestamp("2262-04-11T00:00:00Z", "x").year == 2262
    assert timestamp("1677-09-22T00:00:00Z", "x").year == 1677


def test_item01_out_of_range_timestamp_rejects_record_and_skips_only_its_course(
    sandbox, make_client
):
    client = make_client()
    runs, _ = client.course_runs()
    bad_run = runs[0]
    other_courses = {run.course_uuid for run in runs} - {bad_run.course_uuid}
    path = f"/partners/course_runs/{bad_run.uuid}/course_enrolments_report"
    report = _sandbox_json(sandbox, path)
    assert len(report) >= 2
    report[0]["activated_at"] = "9999-12-31T00:00:00.000Z"
    report[1]["deactivated_at"] = "0001-01-01T00:00:00.000Z"
    sandbox.api.faults = Faults(overrides={path: {"body": json.dumps(report)}})

    parsed = parse_enrolment_report(bad_run.uuid, report, endpoint="report", status=200, raw=b"")
    assert [r.index for r in parsed.rejections] == [0, 1]
    assert "activated_at is out of range" in parsed.rejections[0].reason

    frame = course_runs_frame(runs, {run.course_uuid for run in runs}, ())
    result = fetch_course_enrolments(client, frame)  # raised OutOfBoundsDatetime before
    assert set(result.rejections["course_uuid"]) == {bad_run.course_uuid}
    assert set(result.enrolments["course_uuid"]) >= other_courses
    assert result.failed_runs.empty


def test_item01_out_of_range_run_start_marks_only_its_course(sandbox, make_client):
    body = _sandbox_json(sandbox, "/partners/course_runs")
    body[0]["start_time"] = "0001-01-01T00:00:00Z"
    sandbox.api.faults = Faults(overrides={"/partners/course_runs": {"body": json.dumps(body)}})
    runs, rejections = make_client().course_runs()
    assert [(r.index, r.key) for r in rejections] == [(0, body[0]["course"]["uuid"])]
    frame = course_runs_frame(runs, {body[0]["course"]["uuid"]}, (), rejections)
    assert frame["malformed"].notna().sum() == 1  # pd.to_datetime no longer raises


# -- item 3: any failure of one response costs that request only ---------------------------


def test_item03_deeply_nested_json_is_malformed_and_not_kept_in_the_cache(
    sandbox, make_client, tmp_path, tiny_dataset
):
    deep = "[" * 100_000
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()
    bad = f"/partners/course_runs/{run_uuids[1]}/course_enrolments_report"
    sandbox.api.faults = Faults(
        overrides={"/partners/course_runs": {"body": deep}, bad: {"body": deep}}
    )
    client = make_client()
    with pytest.raises(MalformedResponseError, match="nested too deeply"):
        client.course_runs()
    results = dict(client.enrolment_reports(run_uuids))
    assert isinstance(results[run_uuids[1]], MalformedResponseError)
    assert all(not isinstance(r, Exception) for u, r in results.items() if u != run_uuids[1])
    assert _cached_entries(tmp_path) == len(run_uuids) - 1

    sandbox.api.faults = Faults()
    assert make_client().course_runs()[0], "the bad body was not served from the cache"
    assert sandbox.api.requests["course_runs"] == 2


def _gzip_header_then(body: bytes):
    def behaviour(handler, stop):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return behaviour


def test_item03_corrupt_gzip_body_is_a_partners_api_error(local_server, tmp_path):
    corrupt = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"this is not deflate data" * 4
    url = local_server(_gzip_header_then(corrupt))
    client = _client(url, tmp_path)
    with pytest.raises(MalformedResponseError, match="could not be decompressed"):
        client.course_runs()
    assert _cached_entries(tmp_path) == 0


def test_item03_redirect_loop_is_a_partners_api_error(local_server, tmp_path):
    def loop(handler, stop):
        handler.send_response(302)
        handler.send_header("Location", handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    url = local_server(loop)
    client = _client(url, tmp_path)
    with pytest.raises(PartnersApiError, match="course_runs: more than 5 redirects"):
        client.course_runs()
    assert len(local_server.servers[0].seen) == 6  # the first request and five redirects


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_item03_redis_cache_down_at_start_up_fails_clearly_without_its_password():
    url = f"redis://partners:hunter2-redis-password@127.0.0.1:{_closed_port()}/0"
    with pytest.raises(ConfigurationError) as raised:
        PartnersApiClient("http://127.0.0.1:9", "key", "secret", cache=url)
    message = str(raised.value)
    assert message.startswith("FL_PARTNERS_CACHE: cannot use the Redis cache at")
    assert "partners:***@127.0.0.1" in message
    assert "hunter2" not in message


class _FakeRedis:
    """Just enough of Redis's protocol for a client to start: every command is answered
    ``+OK`` (``+PONG`` for PING). ``stop()`` is Redis going down."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.commands: list[bytes] = []
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self._connections.append(connection)
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        connection.settimeout(0.2)
        buffer = b""
        while not self._stop.is_set():
            try:
                data = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            # Commands are arrays of bulk strings: *N, then $len and the bytes, N times.
            while buffer.startswith(b"*") and b"\r\n" in buffer:
                lines = buffer.split(b"\r\n")
                count = int(lines[0][1:])
                if len(lines) < 1 + 2 * count + 1:
                    break
                words = lines[2 : 2 + 2 * count : 2]
                self.commands.append(words[0].upper())
                buffer = b"\r\n".join(lines[1 + 2 * count :])
                with contextlib.suppress(OSError):
                    connection.sendall(b"+PONG\r\n" if words[0].upper() == b"PING" else b"+OK\r\n")

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._thread.join(timeout=5)


def test_item03_redis_cache_that_goes_down_fails_each_request_not_the_step(sandbox, tiny_dataset):
    fake = _FakeRedis()
    try:
        client = PartnersApiClient(
            sandbox.url,
            DEFAULT_CONSUMER_KEY,
            DEFAULT_CONSUMER_SECRET,
            cache=f"redis://127.0.0.1:{fake.port}/0",
            max_attempts=2,
            backoff_initial=0.01,
            backoff_max=0.02,
        )
        assert b"PING" in fake.commands  # checked at start-up
    finally:
        fake.stop()
    run_uuids = tiny_dataset.runs["run_uuid"].tolist()[:3]
    results = dict(client.enrolment_reports(run_uuids))
    assert set(results) == set(run_uuids)
    for error in results.values():
        assert isinstance(error, ApiUnavailableError)
        assert "response cache (FL_PARTNERS_CACHE) failed: ConnectionError" in str(error)
    client.close()


# -- item 4: an overall deadline per request -----------------------------------------------


def _send_json(handler, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _trickle(where: str):
    """Answer one byte at a time, 0.2 s apart: no socket read waits long enough to time out.
    Bounded: at most 300 bytes (60 s), less if the client hangs up or the test ends."""

    def behaviour(handler, stop):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 300\r\n\r\n"
        stream = head + b" " * 300
        if where == "body":
            handler.wfile.write(head)
            handler.wfile.flush()
            stream = b" " * 300
        for index in range(min(len(stream), 300)):
            if stop.wait(0.2):
                return
            try:
                handler.wfile.write(stream[index : index + 1])
                handler.wfile.flush()
            except OSError:
                return

    return behaviour


@pytest.mark.parametrize("where", ["headers", "body"])
def test_item04_a_trickling_server_cannot_keep_a_request_past_its_deadline(
    local_server, tmp_path, where
):
    url = local_server(_trickle(where))
    client = _client(url, tmp_path, read_timeout=5.0, request_deadline=1.5, max_attempts=6)
    with pytest.raises(DeadlineExceededError, match="request deadline of 1.5 s") as raised:
        client.course_runs()
    assert isinstance(raised.value, ApiUnavailableError)  # callers skip the course as before
    assert len(local_server.servers[0].seen) == 1, "no attempt is started past the deadline"
    assert _cached_entries(tmp_path) == 0


def test_item04_every_deadline_is_watched_by_one_shared_thread(local_server, tmp_path, monkeypatch):
    # A night makes tens of thousands of requests: a timer thread for each cost more than
    # the request. One watchdog thread serves them all, and the deadlines still fire (above).
    body = b"[]"

    def answer(handler, stop):
        _send_json(handler, body)

    url = local_server(answer)
    client = _client(url, tmp_path, cache=None)
    started: list[str] = []
    start = threading.Thread.start

    def counting_start(thread):
        started.append(thread.name)
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for _ in range(25):
        assert client.course_runs() == ([], [])
    assert client.stats.snapshot()["course_runs"]["network"] == 25
    assert len(started) <= 1, started  # the watchdog, unless an earlier test started it


def test_item04_a_forked_child_does_not_inherit_its_parents_deadlines():
    # The parent's deadlines watch the parent's sockets, which a child shares: a child's
    # watchdog must never shut them.
    from partners_dagster.partners_api import transport

    class NoSocket:
        sock = None

    with transport.Deadline(60) as deadline:
        deadline.watch(NoSocket())  # type: ignore[arg-type]
        assert any(entry[2] is deadline for entry in transport._WATCHDOG._heap)
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's verdict is its exit code
            watchdog = transport._WATCHDOG
            os._exit(0 if (watchdog._heap, watchdog._thread) == ([], None) else 1)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_item04_deadline_is_settable_on_the_resource_with_a_default():
    resource = PartnersApiResource(
        base_url="http://127.0.0.1:9", consumer_key="k", consumer_secret="s"
    )
    assert resource.client.request_deadline == 120.0
    resource = PartnersApiResource(
        base_url="http://127.0.0.1:9",
        consumer_key="k",
        consumer_secret="s",
        request_deadline_seconds=7.0,
    )
    assert resource.client.request_deadline == 7.0


# -- item 5: a cap on the decompressed size ------------------------------------------------


def _gzip_bomb(mebibytes: int) -> bytes:
    """A gzip body of about 1 KiB per MiB it inflates to (gzip members may be concatenated)."""
    return gzip.compress(b"0" * (1024 * 1024), 9) * mebibytes


def test_item05_gzip_bomb_fails_its_request_without_reading_the_whole_body(local_server, tmp_path):
    bomb = _gzip_bomb(300)  # about 300 KiB that inflates to 300 MiB

    def send_then_hang(handler, stop):
        # The body never ends: a client that reads it all waits until its timeouts.
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(bomb) + 1_000_000))
        handler.end_headers()
        handler.wfile.write(bomb)
        handler.wfile.flush()
        stop.wait(30)

    url = local_server(send_then_hang)
    client = _client(url, tmp_path, max_response_bytes={"course_runs": 1024 * 1024})
    with pytest.raises(ResponseTooLargeError) as raised:
        client.course_runs()
    assert str(raised.value).startswith(
        f"course_runs: the answer from {url}/partners/course_runs is larger than 1048576 bytes"
    )
    assert len(local_server.servers[0].seen) == 1, "not retried"
    assert _cached_entries(tmp_path) == 0


def test_item05_caps_are_per_endpoint_and_checked():
    client = PartnersApiClient(
        "http://127.0.0.1:9", "k", "s", max_response_bytes={"course_run": 10}
    )
    assert client.max_response_bytes["course_run"] == 10
    assert client.max_response_bytes["course_enrolments_report"] > 10 * 1024 * 1024
    with pytest.raises(ConfigurationError, match="max_response_bytes: 'reports'"):
        PartnersApiClient("http://127.0.0.1:9", "k", "s", max_response_bytes={"reports": 10})


# -- item 6: no token in the cache on a same-host redirect ---------------------------------


def test_item06_bearer_token_does_not_reach_the_cache_on_a_same_host_redirect(
    local_server, tmp_path
):
    body = json.dumps([]).encode()

    def redirect_once(handler, stop):
        if handler.path == "/partners/course_runs":
            handler.send_response(301)
            handler.send_header("Location", "/partners/course_runs/moved")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        _send_json(handler, body)

    url = local_server(redirect_once)
    client = _client(url, tmp_path)
    assert client.course_runs() == ([], [])
    seen = local_server.servers[0].seen
    assert [path for path, _ in seen] == ["/partners/course_runs", "/partners/course_runs/moved"]
    token = seen[0][1].removeprefix("Bearer ")
    assert seen[1][1] == f"Bearer {token}", "same host: the token follows the redirect"
    client.close()
    data = _cache_bytes(tmp_path)
    assert b"/partners/course_runs/moved" in data  # the grep below can find what is there
    assert token.encode() not in data
    assert token.split(".")[1].encode() not in data
    assert client.course_runs() == ([], []) and len(seen) == 2, "served from the cache"


# -- item 11: the cache is namespaced by consumer key --------------------------------------


def test_item11_another_consumer_key_is_not_served_cached_data(sandbox, make_client):
    assert make_client().course_runs()[0]
    assert sandbox.api.requests["course_runs"] == 1
    stranger = make_client(consumer_key="someone-else")
    with pytest.raises(UnauthorizedError):
        stranger.course_runs()
    assert sandbox.api.requests["course_runs"] == 4  # asked the API, which refused it
    again = make_client()
    assert again.course_runs()[0] and again.stats.total("cache_hits") == 1


# -- item 15: ignored course UUIDs ---------------------------------------------------------

CANONICAL = "545ba924-9e73-4a30-bd54-4fb7dee8b913"


@pytest.mark.parametrize(
    "written",
    [
        CANONICAL,
        CANONICAL.upper(),
        "{" + CANONICAL + "}",
        CANONICAL.replace("-", ""),
        "urn:uuid:" + CANONICAL,
        "  " + CANONICAL.upper().replace("-", "") + "  ",
    ],
)
def test_item15_ignored_course_uuids_are_canonicalised(written, monkeypatch):
    assert settings.parse_uuid_list(f"{written},,") == {CANONICAL}
    monkeypatch.setenv("FL_PARTNERS_IGNORED_COURSE_UUIDS", f"{written}, ")
    assert settings.ignored_course_uuids_text() == CANONICAL


@pytest.mark.parametrize("bad", ["not-a-uuid", CANONICAL[:-1], CANONICAL + "0", "{" + CANONICAL])
def test_item15_ignored_course_uuids_refuse_anything_else(bad, monkeypatch):
    monkeypatch.setenv("FL_PARTNERS_IGNORED_COURSE_UUIDS", f"{CANONICAL},{bad}")
    with pytest.raises(ConfigurationError) as raised:
        settings.ignored_course_uuids_text()
    assert str(raised.value) == f"FL_PARTNERS_IGNORED_COURSE_UUIDS: {bad!r} is not a UUID"
    resource = PartnersApiResource(
        base_url="http://127.0.0.1:9",
        consumer_key="k",
        consumer_secret="s",
        ignored_course_uuids=f"{CANONICAL},{bad}",
    )
    with pytest.raises(ConfigurationError, match="FL_PARTNERS_IGNORED_COURSE_UUIDS"):
        resource.setup_for_execution(None)


# -- item 16: plain http only to this machine ----------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://api.example.org", "http://10.0.0.5:8000/", "http://user:pw@partners.test"]
)
def test_item16_plain_http_to_another_host_is_refused_unless_allowed(url):
    with pytest.raises(ConfigurationError, match="FL_PARTNERS_ALLOW_INSECURE_HTTP") as raised:
        PartnersApiClient(url, "k", "s")
    assert str(raised.value).startswith("FL_PARTNERS_URL ")
    assert ":pw@" not in str(raised.value)
    assert PartnersApiClient(url, "k", "s", allow_insecure_http=True).base_url == url.rstrip("/")
    resource = PartnersApiResource(base_url=url, consumer_key="k", consumer_secret="s")
    with pytest.raises(ConfigurationError):
        resource.setup_for_execution(None)
    allowed = PartnersApiResource(
        base_url=url, consumer_key="k", consumer_secret="s", allow_insecure_http=True
    )
    assert allowed.client.base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.org",
        "http://127.0.0.1:8000",
        "http://127.1.2.3",
        "http://localhost:8000",
        "http://[::1]:8000",
    ],
)
def test_item16_https_and_loopback_http_are_accepted(url):
    assert PartnersApiClient(url, "k", "s").base_url == url


@pytest.mark.parametrize("url", ["ftp://api.example.org", "api.example.org", "https://"])
def test_item16_a_base_url_that_is_not_http_is_refused(url):
    with pytest.raises(ConfigurationError, match="FL_PARTNERS_URL must be an https:// URL"):
        PartnersApiClient(url, "k", "s")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, False), ("", False), ("false", False), ("0", False), ("true", True), ("YES", True)],
)
def test_item16_allow_insecure_http_setting(raw, expected, monkeypatch):
    if raw is None:
        monkeypatch.delenv("FL_PARTNERS_ALLOW_INSECURE_HTTP", raising=False)
    else:
        monkeypatch.setenv("FL_PARTNERS_ALLOW_INSECURE_HTTP", raw)
    assert settings.allow_insecure_http() is expected


def test_item16_allow_insecure_http_setting_refuses_other_words(monkeypatch):
    monkeypatch.setenv("FL_PARTNERS_ALLOW_INSECURE_HTTP", "sure")
    with pytest.raises(ConfigurationError, match="FL_PARTNERS_ALLOW_INSECURE_HTTP must be true"):
        settings.allow_insecure_http()


# -- item 20: the response cache file is private -------------------------------------------


def test_item20_sqlite_cache_files_are_readable_by_their_owner_only(sandbox, make_client, tmp_path):
    client = make_client()
    runs, _ = client.course_runs()
    client.enrolment_report(runs[0].uuid)
    files = sorted(tmp_path.glob("cache.sqlite3*"))
    assert {path.name for path in files} >= {"cache.sqlite3", "cache.sqlite3-wal"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
