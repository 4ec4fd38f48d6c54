"""A local stand-in for FutureLearn's Partners API sandbox.

Serves the four endpoints of partners-api.md with the recorded shapes and headers,
checks every JWT like the real API, and can inject faults (latency, 500s, 429s,
dropped connections, slow responses, tokens rejected early) for tests and
benchmarks. Control endpoints under ``/_sandbox`` (no auth; loopback only) expose
request counts and let a test change faults or override a path's response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .dataset import SandboxDataset

DEFAULT_CONSUMER_KEY = "sandbox-consumer-key"
DEFAULT_CONSUMER_SECRET = "sandbox-consumer-secret-not-for-production"

OK_HEADERS = {"Cache-Control": "max-age=0, private, must-revalidate"}
NOT_FOUND_HEADERS = {"Cache-Control": "no-cache"}


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


def _iso(epoch: int) -> str | None:
    if epoch < 0:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _json_str(value: str | None) -> str:
    return "null" if value is None else json.dumps(value)


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
    ):
        self.dataset = dataset
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.faults = faults or Faults()
        self._random = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self.requests: Counter = Counter()  # endpoint -> requests received
        self.responses: Counter = Counter()  # (endpoint, status) -> responses sent
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
            ]
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

    async def stats(self, request: Request) -> Response:
        with self._lock:
            return JSONResponse(
                {
                    "requests": dict(self.requests),
                    "responses": {f"{e} {s}": n for (e, s), n in self.responses.items()},
                }
            )

    async def reset_stats(self, request: Request) -> Response:
        with self._lock:
            self.requests.clear()
            self.responses.clear()
        return JSONResponse({"ok": True})

    async def advance(self, request: Request) -> Response:
        """Move the data on to the next night (see ``dataset.advance_night``)."""
        from .dataset import advance_night

        body = await request.json()
        with self._lock:
            changes = advance_night(self.dataset, int(body.get("seed", 1)))
            self._index_memberships()
        return JSONResponse(changes)

    async def set_faults(self, request: Request) -> Response:
        if request.method == "PUT":
            self.faults = Faults(**(await request.json()))
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
            return Response(
                override.get("body", ""),
                status_code=override.get("status", 200),
                media_type=override.get("content_type", "application/json"),
                headers=OK_HEADERS,
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
        headers = dict(OK_HEADERS, ETag=f'W/"{hashlib.md5(data).hexdigest()}"')
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
            jwt.decode(
                token,
                self.consumer_secret,
                algorithms=["HS256"],  # alg "none" or anything else is refused
                issuer=self.consumer_key,
                options={"require": ["iss", "iat", "exp"]},
            )
        except jwt.InvalidTokenError:
            return False
        return True

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
        return json.dumps([self._run_obj(base, row) for row in self.dataset.runs.itertuples()])

    def _run_json(self, base: str, run: int) -> str:
        return json.dumps(self._run_obj(base, next(self.dataset.runs.iloc[[run]].itertuples())))

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
            }
        )


class SandboxServer:
    """Runs a ``SandboxApi`` with uvicorn on a loopback port, in a background thread."""

    def __init__(self, api: SandboxApi, host: str = "127.0.0.1", port: int = 0):
        self.api = api
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(api.app, log_level="critical", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

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

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
