"""The FutureLearn Partners API client: auth, response cache, retries, typed records.

Retries live here, at the level that signs requests, rather than in urllib3's
``Retry``: urllib3 resends the *original* request, whose 90-second token can
expire while it waits out a ``Retry-After``. Every attempt below asks the
``TokenSource`` for a token that is valid at the moment it is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import requests
import requests_cache
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from ..settings import ConfigurationError
from .errors import (
    ApiUnavailableError,
    MalformedResponseError,
    NotFoundError,
    PartnersApiError,
    UnauthorizedError,
)
from .records import (
    CourseRun,
    EnrolmentReport,
    OrganisationMembership,
    Rejection,
    course_run_from_json,
    organisation_membership_from_json,
    parse_course_runs,
    parse_enrolment_report,
    parse_one,
)
from .tokens import TokenSource

T = TypeVar("T")

# Endpoint names used in errors and request counters.
COURSE_RUNS = "course_runs"
COURSE_RUN = "course_run"
ENROLMENTS_REPORT = "course_enrolments_report"
ORGANISATION_MEMBERSHIP = "organisation_membership"
ENDPOINTS = (COURSE_RUNS, COURSE_RUN, ENROLMENTS_REPORT, ORGANISATION_MEMBERSHIP)

MAX_UNAUTHORIZED_ATTEMPTS = 3


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Unauthorized(_Retryable):
    pass


class RequestStats:
    """Per-endpoint counters: network requests, cache hits, retries. Thread-safe."""

    FIELDS = ("network", "cache_hits", "retries", "failures")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter] = defaultdict(Counter)

    def add(self, endpoint: str, field: str, n: int = 1) -> None:
        with self._lock:
            self._counts[endpoint][field] += n

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                endpoint: {field: self._counts[endpoint][field] for field in self.FIELDS}
                for endpoint in ENDPOINTS
            }

    def total(self, field: str) -> int:
        with self._lock:
            return sum(counts[field] for counts in self._counts.values())


def make_cache_backend(location: str | None) -> requests_cache.BaseCache | None:
    """A SQLite file path, or a ``redis://`` URL; ``None`` or ``""`` means no cache."""
    if not location:
        return None
    if location.startswith(("redis://", "rediss://", "unix://")):
        from redis import Redis

        return requests_cache.RedisCache(
            namespace="partners_api", connection=Redis.from_url(location)
        )
    path = Path(location)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers and the writer overlap; fast_save skips the fsync per response
        # (a cache lost in a crash is refilled from the API, nothing else is lost); another
        # process writing the same file (two nights at once) is waited for, not an error.
        backend = requests_cache.SQLiteCache(path, wal=True, fast_save=True, busy_timeout=60_000)
        backend.responses.count()  # opens the file now, so a bad path fails here
    except Exception as error:
        raise ConfigurationError(
            f"FL_PARTNERS_CACHE: cannot open cache file {str(path)!r}: {error}"
        ) from None
    return backend


def _is_json_response(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").split(";")[0].strip() == "application/json"


def _cache_key(request: requests.PreparedRequest, **_: Any) -> str:
    """Method and URL only: our URLs are canonical, and the key must never depend on the token.
    (requests-cache's default key normalises every request, a cost paid on each cache hit.)"""
    return hashlib.sha256(f"{request.method} {request.url}".encode()).hexdigest()[:32]


def _is_cacheable(response: requests.Response) -> bool:
    """Successful JSON answers, and a membership's JSON 404: "this membership does not exist" is
    an answer too, and without it every night would re-ask for each deleted membership."""
    if not _is_json_response(response):
        return False
    if response.status_code == 404:
        return "/partners/organisation_memberships/" in response.url
    return response.status_code == 200


class PartnersApiClient:
    def __init__(
        self,
        base_url: str,
        consumer_key: str,
        consumer_secret: str,
        *,
        cache: str | None = None,
        cache_expiry_seconds: int = 5 * 60 * 60,
        max_concurrency: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 6,
        backoff_initial: float = 0.5,
        backoff_max: float = 20.0,
        max_retry_after: float = 60.0,
    ):
        if not base_url:
            raise ConfigurationError("FL_PARTNERS_URL is empty")
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.tokens = TokenSource(consumer_key, consumer_secret)
        self.max_concurrency = max_concurrency
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial
        )
        self._max_retry_after = max_retry_after
        self._cache_expiry = cache_expiry_seconds
        self._cache = cache
        self._backend = make_cache_backend(cache)  # checks the location now, and serves clear()
        self._thread_backends: list[requests_cache.BaseCache] = []
        self._local = threading.local()
        self.stats = RequestStats()

    # -- public reads ----------------------------------------------------------------------

    def course_runs(self) -> tuple[list[CourseRun], list[Rejection]]:
        return self._read(
            "/partners/course_runs",
            COURSE_RUNS,
            lambda body, status, raw: parse_course_runs(
                body, endpoint=COURSE_RUNS, status=status, raw=raw
            ),
        )

    def course_run(self, run_uuid: str) -> CourseRun:
        return self._read(
            f"/partners/course_runs/{run_uuid}",
            COURSE_RUN,
            lambda body, status, raw: parse_one(
                body, course_run_from_json, endpoint=COURSE_RUN, status=status, raw=raw
            ),
        )

    def enrolment_report(self, run_uuid: str) -> EnrolmentReport:
        return self._read(
            f"/partners/course_runs/{run_uuid}/course_enrolments_report",
            ENROLMENTS_REPORT,
            lambda body, status, raw: parse_enrolment_report(
                run_uuid, body, endpoint=ENROLMENTS_REPORT, status=status, raw=raw
            ),
        )

    def organisation_membership(self, membership_uuid: str) -> OrganisationMembership:
        return self._read(
            f"/partners/organisation_memberships/{membership_uuid}",
            ORGANISATION_MEMBERSHIP,
            lambda body, status, raw: parse_one(
                body,
                organisation_membership_from_json,
                endpoint=ORGANISATION_MEMBERSHIP,
                status=status,
                raw=raw,
            ),
        )

    def enrolment_reports(
        self, run_uuids: Iterable[str]
    ) -> Iterator[tuple[str, EnrolmentReport | PartnersApiError]]:
        """Fetch many reports on a bounded pool; yields (run, report or the error) as each ends."""
        return self.fetch_many(run_uuids, self.enrolment_report)

    def organisation_memberships(
        self, membership_uuids: Iterable[str]
    ) -> Iterator[tuple[str, OrganisationMembership | PartnersApiError]]:
        return self.fetch_many(membership_uuids, self.organisation_membership)

    def fetch_many(
        self, keys: Iterable[str], fetch: Callable[[str], T]
    ) -> Iterator[tuple[str, T | PartnersApiError]]:
        keys = list(keys)
        if not keys:
            return
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(keys))) as pool:
            futures = {pool.submit(fetch, key): key for key in keys}
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result()
                except PartnersApiError as error:
                    yield futures[future], error

    def clear_cache(self) -> None:
        if self._backend is not None:
            self._backend.clear()

    def close(self) -> None:
        for backend in [self._backend, *self._thread_backends]:
            if backend is not None:
                backend.close()

    def __repr__(self) -> str:
        return f"PartnersApiClient(base_url={self.base_url!r})"

    # -- transport -------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        # Neither requests.Session nor a SQLite connection should be shared between threads:
        # each thread has its own session and cache connection to the same file, and SQLite's
        # own locking (with the busy timeout) orders their writes, across processes too.
        session = getattr(self._local, "session", None)
        if session is None:
            if self._backend is None:
                session = requests.Session()
            else:
                backend = make_cache_backend(self._cache)
                self._thread_backends.append(backend)
                self._local.backend = backend
                session = requests_cache.CachedSession(
                    backend=backend,
                    expire_after=self._cache_expiry,
                    # The API says max-age=0; we impose our own expiry instead.
                    cache_control=False,
                    allowable_codes=(200, 404),
                    allowable_methods=("GET",),
                    filter_fn=_is_cacheable,
                    # Not part of the cache key, and redacted from what is stored.
                    ignored_parameters=("Authorization",),
                    match_headers=False,
                    key_fn=_cache_key,
                    autoclose=False,
                )
            session.headers.update(
                {"Accept": "application/json", "Content-Type": "application/json"}
            )
            if not any(name.lower().endswith("_proxy") for name in os.environ):
                # No proxy configured: skip requests' scan of the environment on every request.
                session.trust_env = False
            self._local.session = session
        return session

    def _read(self, path: str, endpoint: str, parse: Callable[[Any, int, bytes], T]) -> T:
        response = self._get(self.base_url + path, endpoint)
        raw = response.content
        try:
            if not _is_json_response(response):
                raise MalformedResponseError(
                    f"Content-Type is {response.headers.get('Content-Type')!r}, not application/json",
                    endpoint=endpoint,
                    status=response.status_code,
                    body=raw,
                )
            try:
                body = json.loads(raw)
            except ValueError as error:
                raise MalformedResponseError(
                    f"not valid JSON ({error})",
                    endpoint=endpoint,
                    status=response.status_code,
                    body=raw,
                ) from None
            return parse(body, response.status_code, raw)
        except MalformedResponseError:
            self._forget(response)
            raise

    def _forget(self, response: requests.Response) -> None:
        """Never serve a bad body from the cache again."""
        backend = getattr(self._local, "backend", None)
        if backend is not None and getattr(response, "cache_key", None):
            backend.delete(response.cache_key)

    def _get(self, url: str, endpoint: str) -> requests.Response:
        unauthorized = 0

        def stop(state: RetryCallState) -> bool:
            return (
                state.attempt_number >= self.max_attempts
                or unauthorized >= MAX_UNAUTHORIZED_ATTEMPTS
            )

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, _Unauthorized):
                return 0.0
            if isinstance(error, _Retryable) and error.retry_after is not None:
                return min(error.retry_after, self._max_retry_after)
            return self._backoff(state)

        def count_retry(state: RetryCallState) -> None:
            self.stats.add(endpoint, "retries")

        retrying = Retrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=count_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        return self._send(url, endpoint)
                    except _Unauthorized:
                        unauthorized += 1
                        raise
        except _Unauthorized as error:
            self.stats.add(endpoint, "failures")
            raise UnauthorizedError(
                f"{endpoint}: token refused {unauthorized} times ({error}); "
                "check FL_PARTNERS_CONSUMER_KEY and FL_PARTNERS_CONSUMER_SECRET",
                endpoint=endpoint,
                status=401,
            ) from None
        except _Retryable as error:
            self.stats.add(endpoint, "failures")
            raise ApiUnavailableError(
                f"{endpoint}: gave up after {self.max_attempts} attempts: {error}",
                endpoint=endpoint,
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, url: str, endpoint: str) -> requests.Response:
        token = self.tokens.token()
        try:
            response = self._session().get(
                url, headers={"Authorization": f"Bearer {token}"}, timeout=self.timeout
            )
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as error:
            self.stats.add(endpoint, "network")
            raise _Retryable(f"{type(error).__name__} on {url}") from None
        self.stats.add(
            endpoint, "cache_hits" if getattr(response, "from_cache", False) else "network"
        )
        status = response.status_code
        if status == 200:
            return response
        if status == 401:
            self.tokens.invalidate(token)
            raise _Unauthorized(f"HTTP 401 on {url}")
        if status == 404:
            raise NotFoundError(f"{endpoint}: not found: {url}", endpoint=endpoint, status=404)
        if status == 429:
            raise _Retryable(f"HTTP 429 on {url}", retry_after=_retry_after_seconds(response))
        if status >= 500:
            raise _Retryable(f"HTTP {status} on {url}")
        raise PartnersApiError(
            f"{endpoint}: unexpected HTTP {status} on {url}", endpoint=endpoint, status=status
        )


def _retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
