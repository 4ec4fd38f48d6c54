"""A local stand-in for FutureLearn's Partners API sandbox.

Serves the four endpoints of docs/partners-api.md with the recorded shapes and headers, plays
Rails (compact JSON, Rack's weak ETag, and a ``304`` with no body for a matching
``If-None-Match``), checks every JWT like the real API, and can inject faults (latency, 500s, 429s,
dropped connections, slow responses, tokens rejected early) for tests and
benchmarks. Control endpoints under ``/_sandbox`` expose request counts and let a test
change faults or override a path's response; they want the server's control token in
the ``X-Sandbox-Control-Token`` header (``SandboxServer.control`` sends it).

The server listens on loopback only and answers only requests whose ``Host`` names a
loopback address (127.0.0.0/8, ``localhost``, ``[::1]``): a web page that rebinds its own
DNS name to 127.0.0.1 still sends its own name as ``Host`` and gets a 403.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import math
import random
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import jwt
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .dataset import SandboxDataset

DEFAULT_CONSUMER_KEY = "sandbox-consumer-key"
DEFAULT_CONSUMER_SECRET = "sandbox-consumer-secret-not-for-production"

OK_HEADERS = {"Cache-Control": "max-age=0, private, must-revalidate"}
NOT_FOUND_HEADERS = {"Cache-Control": "no-cache"}
# How Rails renders JSON: no spaces, non-ASCII characters as they are.
COMPACT_JSON = {"separators": (",", ":"), "ensure_ascii": False}

CONTROL_TOKEN_HEADER = "X-Sandbox-Control-Token"
# The real contract (docs/partners-api.md): HS256, numeric iat and exp, a short lifetime.
MAX_TOKEN_LIFETIME_SECONDS = 300
# How far in the future an iat may lie: clocks of client and server differ a little.
IAT_LEEWAY_SECONDS = 30
FAULT_NAMES = ("token", "error", "rate_limit", "drop", "slow")


@dataclass
class Faults:
    """Fault injection settings. Rates are probabilities per request (0–1)."""

    latency_ms: float = 0.0
    error_rate: float = 0.0  # HTTP 500
    rate_limit_rate: float = 0.0  # HTTP 429 with Retry-After
    retry_after_seconds: float = 1.0
    drop_rate: float = 0.0  # connection dropped mid-response
    slow_rate: float = (
        0.0  # response delayed by slow_seconds (longer than the client's read timeout)
    )
    slow_seconds: float = 5.0
    token_reject_rate: float = 0.0  # a valid token answered with 401
    seed: int = 0
    # Faults for the next requests, in order ("token", "error", "rate_limit", "drop", "slow"),
    # before the random ones apply: deterministic scenarios for tests.
    script: list[str] = field(default_factory=list)
    failing_runs: list[str] = field(default_factory=list)  # their reports always answer 500
    # path -> {"status": int, "content_type": str, "body": str}: answer this instead
    overrides: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        """Faults from a control request's JSON body; ``ValueError`` naming the field that is
        wrong, so a bad body is the caller's 400 and never a failure at request time."""
        if not isinstance(data, dict):
            raise ValueError(f"the faults must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault field(s) {unknown}; known: {sorted(known)}")
        for name, value in data.items():
            _check_fault_field(name, value)
        return cls(**data)

    @property
    def any_random(self) -> bool:
        return any(
            (
                self.error_rate,
                self.rate_limit_rate,
                self.drop_rate,
                self.slow_rate,
                self.token_reject_rate,
            )
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_fault_field(name: str, value: Any) -> None:
    def fail(expected: str) -> ValueError:
        return ValueError(f"fault field {name!r} must be {expected}, not {value!r:.80}")

    if name == "seed":
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail("an integer")
    elif name.endswith("_rate"):
        if not _is_number(value) or not 0 <= value <= 1:
            raise fail("a number from 0 to 1")
    elif name in ("latency_ms", "retry_after_seconds", "slow_seconds"):
        if not _is_number(value) or value < 0:
            raise fail("a number of at least 0")
    elif name == "script":
        if not isinstance(value, list) or any(v not in FAULT_NAMES for v in value):
            raise fail(f"a list of fault names from {list(FAULT_NAMES)}")
    elif name == "failing_runs":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail("a list of run UUID strings")
    elif name == "overrides":
        if not isinstance(value, dict):
            raise fail('an object {path: {"status", "content_type", "body"}}')
        for path, override in value.items():
            if not isinstance(override, dict) or set(override) - {
                "status",
                "content_type",
                "body",
            }:
                raise ValueError(
                    f"override for {path!r:.80} must be an object with only "
                    '"status", "content_type" and "body"'
                )
            status = override.get("status", 200)
            if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
                raise ValueError(f"override for {path!r:.80}: status must be an HTTP status code")
            for key in ("content_type", "body"):
                if not isinstance(override.get(key, ""), str):
                    raise ValueError(f"override for {path!r:.80}: {key} must be a string")


def is_loopback_host(host_header: str | None) -> bool:
    """Whether an HTTP ``Host`` header names loopback: ``localhost``, 127.0.0.0/8 or
    ``[::1]``, with or without a port."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket:
            return False
    else:
        name, _, rest = host.partition(":")
        rest = f":{rest}" if _ else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return False
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    # An IPv6 address must come in brackets, an IPv4 one must not.
    return address.is_loopback and host.startswith("[") == (address.version == 6)


class _LoopbackHostOnly:
    """ASGI middleware: 403 for any request whose Host is not a loopback name (DNS rebinding)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host")
            if not is_loopback_host(host):
                response = PlainTextResponse(
                    f"sandbox: the Host header {host!r:.100} is not a loopback name; "
                    "this server answers only 127.0.0.1, localhost or [::1]\n",
                    status_code=403,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _control(handler):
    """A control endpoint: the control token is required, and a bad body is a 400."""

    async def endpoint(self, request: Request) -> Response:
        given = request.headers.get(CONTROL_TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(given, self.control_token.encode()):
            return PlainTextResponse(
                f"sandbox control: missing or wrong {CONTROL_TOKEN_HEADER} header "
                "(`partners-dagster sandbox` prints the token; in-process, use "
                "SandboxServer.control)\n",
                status_code=401,
            )
        try:
            return await handler(self, request)
        except ValueError as error:
            return PlainTextResponse(
                f"sandbox control {request.method} {request.url.path}: {error}\n",
                status_code=400,
            )

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def _json_body(request: Request, *, empty: Any) -> Any:
    raw = await request.body()
    if not raw.strip():
        return empty
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"the body is not JSON ({error})") from None


def _iso(epoch: int) -> str | None:
    if epoch < 0:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def rails_etag(body: bytes) -> str:
    """The weak ETag Rack::ETag gives a body: the first 32 hex digits of its SHA-256."""
    return f'W/"{hashlib.sha256(body).hexdigest()[:32]}"'


def _ok_headers(body: bytes) -> dict[str, str]:
    return dict(OK_HEADERS, ETag=rails_etag(body))


def _not_modified(request: Request, body: bytes) -> Response | None:
    """Rack::ConditionalGet: a ``304`` with no body when ``If-None-Match`` names the body's
    ETag (or is ``*``); ``None`` when the body must be sent."""
    asked = request.headers.get("if-none-match")
    if not asked:
        return None
    etag = rails_etag(body)
    tags = {tag.strip() for tag in asked.split(",")}
    if "*" not in tags and etag not in tags:
        return None
    return Response(status_code=304, headers=_ok_headers(body))


def _json_str(value: str | None) -> str:
    return "null" if value is None else json.dumps(value, ensure_ascii=False)


class _DroppedResponse(Response):
    """Announces a body, sends half of it, then fails: the client sees a broken connection."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send(
            {
                "type": "http.response.body",
                "body": self.body[: len(self.body) // 2],
                "more_body": True,
            }
        )
        raise ConnectionAbortedError("sandbox fault: connection dropped")


class SandboxApi:
    def __init__(
        self,
        dataset: SandboxDataset,
        *,
        consumer_key: str = DEFAULT_CONSUMER_KEY,
        consumer_secret: str = DEFAULT_CONSUMER_SECRET,
        faults: Faults | None = None,
        control_token: str | None = None,
    ):
        """``control_token`` guards the ``/_sandbox`` endpoints; a random one when not given."""
        if not consumer_key:
            raise ValueError("the sandbox's consumer key must not be empty")
        if not consumer_secret:
            raise ValueError("the sandbox's consumer secret must not be empty")
        if control_token is not None and not control_token:
            raise ValueError("the sandbox's control token must not be empty")
        self.dataset = dataset
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.control_token = control_token or secrets.token_urlsafe(32)
        self.faults = faults or Faults()
        self._random = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self.requests: Counter = Counter()  # endpoint -> requests received
        self.responses: Counter = Counter()  # (endpoint, status) -> responses sent
        self.bytes_sent: Counter = Counter()  # endpoint -> bytes of the bodies sent
        self.tokens_seen: set[str] = set()  # every bearer token presented, for leak tests
        self._index_memberships()
        self.app = Starlette(
            routes=[
                Route("/partners/course_runs", self.course_runs),
                Route("/partners/course_runs/{run_uuid}", self.course_run),
                Route(
                    "/partners/course_runs/{run_uuid}/course_enrolments_report",
                    self.enrolments_report,
                ),
                Route("/partners/organisation_memberships/{membership_uuid}", self.membership),
                Route("/_sandbox/stats", self.stats),
                Route("/_sandbox/stats/reset", self.reset_stats, methods=["POST"]),
                Route("/_sandbox/faults", self.set_faults, methods=["GET", "PUT"]),
                Route("/_sandbox/advance", self.advance, methods=["POST"]),
            ],
            middleware=[Middleware(_LoopbackHostOnly)],
        )

    def _index_memberships(self) -> None:
        # Plain lists: a pandas row lookup per request would dominate the sandbox's time.
        memberships = self.dataset.memberships
        self._membership_uuids = memberships["membership_uuid"].tolist()
        self._membership_rows = list(
            zip(
                memberships["learner_uuid"].tolist(),
                memberships["external_learner_id"].tolist(),
                memberships["found"].tolist(),
                strict=True,
            )
        )

    # -- control ---------------------------------------------------------------------------

    @_control
    async def stats(self, request: Request) -> Response:
        with self._lock:
            return JSONResponse(
                {
                    "requests": dict(self.requests),
                    "responses": {f"{e} {s}": n for (e, s), n in self.responses.items()},
                    "bytes": dict(self.bytes_sent),
                }
            )

    @_control
    async def reset_stats(self, request: Request) -> Response:
        with self._lock:
            self.requests.clear()
            self.responses.clear()
            self.bytes_sent.clear()
        return JSONResponse({"ok": True})

    @_control
    async def advance(self, request: Request) -> Response:
        """Move the data on to the next night (see ``dataset.advance_night``)."""
        from .dataset import CHANGE_MODELS, advance_night

        body = await _json_body(request, empty={})
        if not isinstance(body, dict) or set(body) - {"seed", "changes"}:
            raise ValueError(
                'the body must be a JSON object {"seed": <integer>, "changes": '
                f"<one of {list(CHANGE_MODELS)}>}} or empty"
            )
        seed = body.get("seed", 1)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, not {seed!r:.80}")
        model = body.get("changes", "uniform")
        if model not in CHANGE_MODELS:
            raise ValueError(f"changes must be one of {list(CHANGE_MODELS)}, not {model!r:.80}")
        with self._lock:
            changes = advance_night(self.dataset, seed, model=model)
            self._index_memberships()
        return JSONResponse(changes)

    @_control
    async def set_faults(self, request: Request) -> Response:
        if request.method == "PUT":
            self.faults = Faults.from_json(await _json_body(request, empty={}))
            self._random = random.Random(self.faults.seed)
        return JSONResponse(asdict(self.faults))

    # -- the API ---------------------------------------------------------------------------

    async def course_runs(self, request: Request) -> Response:
        return await self._serve(request, "course_runs", lambda base: self._runs_json(base))

    async def course_run(self, request: Request) -> Response:
        run = self.dataset.run_index.get(request.path_params["run_uuid"])
        return await self._serve(
            request, "course_run", lambda base: None if run is None else self._run_json(base, run)
        )

    async def enrolments_report(self, request: Request) -> Response:
        run_uuid = request.path_params["run_uuid"]
        run = self.dataset.run_index.get(run_uuid)
        if run_uuid in self.faults.failing_runs:
            return await self._serve(
                request, "course_enrolments_report", lambda base: None, force_status=500
            )
        return await self._serve(
            request,
            "course_enrolments_report",
            lambda base: None if run is None else self._report_json(base, run),
        )

    async def membership(self, request: Request) -> Response:
        index = self.dataset.membership_index.get(request.path_params["membership_uuid"])
        return await self._serve(
            request,
            "organisation_membership",
            lambda base: None if index is None else self._membership_json(base, index),
        )

    async def _serve(
        self, request: Request, endpoint: str, render, force_status: int | None = None
    ) -> Response:
        with self._lock:
            self.requests[endpoint] += 1
        response = await self._respond(request, endpoint, render, force_status)
        with self._lock:
            self.responses[(endpoint, response.status_code)] += 1
            self.bytes_sent[endpoint] += len(response.body)
        return response

    async def _respond(
        self, request: Request, endpoint: str, render, force_status: int | None
    ) -> Response:
        faults = self.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if not self._token_ok(request.headers.get("authorization", "")):
            return PlainTextResponse("HTTP Token: Access denied.\n", status_code=401)
        override = faults.overrides.get(request.url.path)
        if override:
            status = override.get("status", 200)
            data = override.get("body", "").encode()
            if status == 200 and (not_modified := _not_modified(request, data)) is not None:
                return not_modified
            return Response(
                data,
                status_code=status,
                media_type=override.get("content_type", "application/json"),
                headers=_ok_headers(data) if status == 200 else OK_HEADERS,
            )
        if force_status:
            return PlainTextResponse("Internal Server Error", status_code=force_status)
        fault = self._draw_fault()
        if fault == "token":
            return PlainTextResponse("HTTP Token: Access denied.\n", status_code=401)
        if fault == "error":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if fault == "rate_limit":
            return JSONResponse(
                {"error": "rate_limited"},
                status_code=429,
                headers={"Retry-After": f"{faults.retry_after_seconds:g}"},
            )
        if fault == "slow":
            await asyncio.sleep(faults.slow_seconds)
        base = str(request.base_url).rstrip("/")
        body = render(base)
        if body is None:
            return JSONResponse({"error": "not_found"}, status_code=404, headers=NOT_FOUND_HEADERS)
        data = body.encode()
        # Rails builds the body, then Rack::ConditionalGet sends none if the client has it.
        if (not_modified := _not_modified(request, data)) is not None:
            return not_modified
        headers = _ok_headers(data)
        if fault == "drop":
            return _DroppedResponse(data, media_type="application/json", headers=headers)
        return Response(data, media_type="application/json", headers=headers)

    def _draw_fault(self) -> str | None:
        faults = self.faults
        with self._lock:
            if faults.script:
                return faults.script.pop(0)
            if not faults.any_random:
                return None
            x = self._random.random()
        for name, rate in (
            ("token", faults.token_reject_rate),
            ("error", faults.error_rate),
            ("rate_limit", faults.rate_limit_rate),
            ("drop", faults.drop_rate),
            ("slow", faults.slow_rate),
        ):
            if x < rate:
                return name
            x -= rate
        return None

    def _token_ok(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            return False
        with self._lock:
            if len(self.tokens_seen) < 10_000:
                self.tokens_seen.add(token)
        try:
            claims = jwt.decode(
                token,
                self.consumer_secret,
                algorithms=["HS256"],  # alg "none" or anything else is refused
                issuer=self.consumer_key,
                # PyJWT would take "exp": "9999999999" (it calls int()); the times are
                # checked below, as numbers only.
                options={
                    "require": ["iss", "iat", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError:
            return False
        return token_times_ok(claims.get("iat"), claims.get("exp"), time.time())

    # -- rendering -------------------------------------------------------------------------

    def _run_obj(self, base: str, row) -> dict:
        return {
            "uuid": row.run_uuid,
            "href": f"{base}/partners/course_runs/{row.run_uuid}",
            "title": row.title,
            "full_code": row.full_code,
            "code": row.code,
            "start_time": _iso(int(row.start_time)),
            "weeks_count": int(row.weeks_count),
            "course": {
                "uuid": row.course_uuid,
                "href": f"{base}/partners/courses/{row.course_uuid}",
            },
        }

    def _runs_json(self, base: str) -> str:
        return json.dumps(
            [self._run_obj(base, row) for row in self.dataset.runs.itertuples()], **COMPACT_JSON
        )

    def _run_json(self, base: str, run: int) -> str:
        return json.dumps(
            self._run_obj(base, next(self.dataset.runs.iloc[[run]].itertuples())), **COMPACT_JSON
        )

    def _report_json(self, base: str, run: int) -> str:
        run_uuid = self.dataset.runs["run_uuid"].iat[run]
        rows = self.dataset.enrolments_of_run(run)
        run_ref = f'{{"uuid":"{run_uuid}","href":"{base}/partners/course_runs/{run_uuid}"}}'
        members = self._membership_uuids
        parts = [
            f'{{"run":{run_ref},"organisation_membership":{{"uuid":"{members[m]}",'
            f'"href":"{base}/partners/organisation_memberships/{members[m]}"}},'
            f'"status":"{"deactivated" if off else "active"}","activated_at":{_json_str(_iso(a))},'
            f'"deactivated_at":{_json_str(_iso(d))},"steps_completed_count":{c},'
            f'"steps_completed_ratio":{json.dumps(r)}}}'
            for m, off, a, d, c, r in zip(
                rows["membership"].tolist(),
                rows["deactivated"].tolist(),
                rows["activated_at"].tolist(),
                rows["deactivated_at"].tolist(),
                rows["steps_completed_count"].tolist(),
                rows["steps_completed_ratio"].tolist(),
                strict=True,
            )
        ]
        return "[" + ",".join(parts) + "]"

    def _membership_json(self, base: str, index: int) -> str | None:
        row = self.dataset.memberships.iloc[index]
        if not row["found"]:
            return None
        return json.dumps(
            {
                "uuid": row["membership_uuid"],
                "href": f"{base}/partners/organisation_memberships/{row['membership_uuid']}",
                "learner": {
                    "uuid": row["learner_uuid"],
                    "href": f"{base}/partners/learners/{row['learner_uuid']}",
                },
                "external_learner_id": row["external_learner_id"],
            },
            **COMPACT_JSON,
        )


def token_times_ok(iat: Any, exp: Any, now: float) -> bool:
    """The contract's rule for a token's times: both numeric (NumericDate, not strings),
    issued no later than ``IAT_LEEWAY_SECONDS`` from now, not yet expired, and living at
    most ``MAX_TOKEN_LIFETIME_SECONDS`` (so neither an iat long ago nor an exp years away
    passes). Our own ``TokenSource`` signs iat = now, exp = now + 90."""
    if not (_is_number(iat) and _is_number(exp)):
        return False
    return (
        iat <= now + IAT_LEEWAY_SECONDS
        and exp > now
        and 0 < exp - iat <= MAX_TOKEN_LIFETIME_SECONDS
    )


class SandboxControlError(RuntimeError):
    """A control request was refused; the message names the endpoint and the sandbox's reason."""


class SandboxControl:
    """Calls a running sandbox's ``/_sandbox`` endpoints with its control token.

    ``SandboxServer.control`` makes one for an in-process server; for one started with
    ``partners-dagster sandbox``, pass its URL and control token."""

    def __init__(self, url: str, token: str, *, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False  # loopback: never through a proxy

    def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None):
        response = self._session.request(
            method,
            f"{self.url}/_sandbox/{path}",
            json=body,
            headers={CONTROL_TOKEN_HEADER: self._token},
            timeout=timeout or self.timeout,
        )
        if response.status_code != 200:
            raise SandboxControlError(
                f"sandbox control {method} /_sandbox/{path} at {self.url}: HTTP "
                f"{response.status_code}: {response.text.strip()[:300]}"
            )
        return response.json()

    def stats(self) -> dict:
        """``{"requests": {endpoint: n}, "responses": {"endpoint status": n},
        "bytes": {endpoint: bytes of the bodies sent}}``"""
        return self._call("GET", "stats")

    def reset_stats(self) -> None:
        self._call("POST", "stats/reset")

    def faults(self) -> dict:
        return self._call("GET", "faults")

    def set_faults(self, faults: Faults | dict | None = None, **fields: Any) -> dict:
        """Replace the faults (``Faults`` or its fields; nothing given: no faults)."""
        body = asdict(faults) if isinstance(faults, Faults) else dict(faults or {})
        return self._call("PUT", "faults", {**body, **fields})

    def advance(self, seed: int = 1, *, changes: str = "uniform", timeout: float = 120.0) -> dict:
        """Move the data on one night, by the change model ``changes`` (``dataset.CHANGE_MODELS``);
        the changes made (a large dataset takes a while)."""
        return self._call("POST", "advance", {"seed": seed, "changes": changes}, timeout=timeout)

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:  # never show the token
        return f"SandboxControl({self.url!r})"


def loopback_family(host: str) -> socket.AddressFamily:
    """The socket family to listen on ``host`` with; ValueError unless it is loopback."""
    if host == "localhost":
        return socket.AF_INET
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"the sandbox listens on loopback only (127.0.0.0/8, localhost or ::1), not {host!r}"
        )
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


class SandboxServer:
    """Runs a ``SandboxApi`` with uvicorn on a loopback port, in a background thread.

    ``control`` calls its control endpoints with its ``control_token``."""

    def __init__(self, api: SandboxApi, host: str = "127.0.0.1", port: int = 0):
        self.api = api
        family = loopback_family(host)
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host.strip("[]"), port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            api.app, log_level="critical", access_log=False, lifespan="off", proxy_headers=False
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._control: SandboxControl | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def control_token(self) -> str:
        return self.api.control_token

    @property
    def control(self) -> SandboxControl:
        if self._control is None:
            self._control = SandboxControl(self.url, self.api.control_token)
        return self._control

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="sandbox-api",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the sandbox API did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()
        if self._control is not None:
            self._control.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
