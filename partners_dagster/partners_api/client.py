"""The FutureLearn Partners API client: auth, retries, the request deadline, typed records.
Its response cache is in ``cache``, its request counters in ``stats``.

Retries live here, at the level that signs requests, rather than in urllib3's
``Retry``: urllib3 resends the *original* request, whose 90-second token can
expire while it waits out a ``Retry-After``. Every attempt below asks the
``TokenSource`` for a token that is valid at the moment it is sent.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import requests_cache
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from ..privacy import mask_url, scrub_exception, unreadable_url_reason
from ..settings import DEFAULT_REQUEST_DEADLINE_SECONDS, ConfigurationError
from .cache import (
    CACHE_ERRORS,
    UNCACHED_ENDPOINTS,
    cache_key_function,
    cached_session,
    clear_backend,
    forget_answer,
    fresh_keys,
    is_json_response,
    make_cache_backend,
    parsed_reports,
)
from .endpoints import (
    COURSE_RUN,
    COURSE_RUNS,
    ENDPOINTS,
    ENROLMENTS_REPORT,
    ORGANISATION_MEMBERSHIP,
)
from .errors import (
    ApiUnavailableError,
    DeadlineExceededError,
    MalformedResponseError,
    NotFoundError,
    PartnersApiError,
    ResponseTooLargeError,
    UnauthorizedError,
)
from .parsed_cache import ParsedReports
from .records import (
    CourseRun,
    EnrolmentReport,
    EnrolmentTable,
    OrganisationMembership,
    Rejection,
    course_run_from_json,
    enrolment_table,
    organisation_membership_from_json,
    parse_course_runs,
    parse_enrolment_report,
    parse_one,
)
from .stats import RequestStats
from .tokens import TokenSource
from .transport import (
    BodyTooLarge,
    Deadline,
    DeadlineAdapter,
    is_loopback_host,
    read_body_capped,
)

T = TypeVar("T")


MAX_UNAUTHORIZED_ATTEMPTS = 3
# The API does not redirect; a few hops are followed in case a proxy does, a loop is an error.
MAX_REDIRECTS = 5
MIB = 1024 * 1024
# The most each endpoint may send once decompressed. Generous: a report of the largest run
# seen is a few MiB. A body over its cap fails its request; memory stays bounded.
DEFAULT_MAX_RESPONSE_BYTES = {
    COURSE_RUNS: 64 * MIB,
    COURSE_RUN: 1 * MIB,
    ENROLMENTS_REPORT: 256 * MIB,
    ORGANISATION_MEMBERSHIP: 1 * MIB,
}


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Unauthorized(_Retryable):
    pass


class _DeadlineReached(Exception):
    pass


class _NotCached(Exception):
    """Asked of the response cache alone, which holds no fresh answer."""


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
        request_deadline: float = DEFAULT_REQUEST_DEADLINE_SECONDS,
        max_response_bytes: Mapping[str, int] | None = None,
        allow_insecure_http: bool = False,
    ):
        if not base_url:
            raise ConfigurationError("FL_PARTNERS_URL is empty")
        check_base_url(base_url, allow_insecure_http=allow_insecure_http)
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
        if request_deadline <= 0:
            raise ConfigurationError(
                f"request_deadline must be > 0 seconds, got {request_deadline}"
            )
        self.max_response_bytes = dict(DEFAULT_MAX_RESPONSE_BYTES)
        for endpoint, limit in (max_response_bytes or {}).items():
            if endpoint not in self.max_response_bytes or limit < 1:
                raise ConfigurationError(
                    f"max_response_bytes: {endpoint!r}: {limit!r} is not a size in bytes "
                    f"(>= 1) for one of {', '.join(ENDPOINTS)}"
                )
            self.max_response_bytes[endpoint] = int(limit)
        self.base_url = base_url.rstrip("/")
        self.request_deadline = request_deadline
        self.tokens = TokenSource(consumer_key, consumer_secret)
        self._cache_key = cache_key_function(consumer_key)
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
        self._thread_parsed: list[ParsedReports] = []
        self._pruned = False
        self._local = threading.local()
        self.stats = RequestStats()
        # Refetch (an operator's run option): ask the API again instead of using what the
        # response cache holds, and store the new answers.
        self.refetch = False
        # Called before each retry's wait with (endpoint, attempt that failed, its error,
        # seconds until the next attempt): the resource logs it while the retries go on.
        self.on_retry: Callable[[str, int, BaseException | None, float], None] | None = None

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

    def enrolment_table(self, run_uuid: str) -> EnrolmentTable:
        """A run's enrolment report as columns. An answer that is unchanged (renewed by a
        ``304``, or read from the cache) is not parsed again when its parsed form is kept."""
        response = self._fetch(
            f"{self.base_url}/partners/course_runs/{run_uuid}/course_enrolments_report",
            ENROLMENTS_REPORT,
        )
        parsed = getattr(self._local, "parsed", None)
        key = getattr(response, "cache_key", None)
        etag = response.headers.get("ETag")
        if parsed is None or not key or not etag:
            return self._parse_table(response, run_uuid)
        if getattr(response, "from_cache", False):
            table = parsed.get(key, etag)
            if table is not None and table.run_uuid == run_uuid:
                return table
        table = self._parse_table(response, run_uuid)
        parsed.put(key, etag, table)
        return table

    def _parse_table(self, response: requests.Response, run_uuid: str) -> EnrolmentTable:
        return self._parse(
            response,
            ENROLMENTS_REPORT,
            lambda body, status, raw: enrolment_table(
                parse_enrolment_report(
                    run_uuid, body, endpoint=ENROLMENTS_REPORT, status=status, raw=raw
                )
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
        """Many reports: see ``fetch_many``."""
        return self.fetch_many(run_uuids, self.enrolment_report, ENROLMENTS_REPORT)

    def enrolment_tables(
        self, run_uuids: Iterable[str]
    ) -> Iterator[tuple[str, EnrolmentTable | PartnersApiError]]:
        """Many reports as columns: see ``fetch_many`` and ``enrolment_table``."""
        return self.fetch_many(run_uuids, self.enrolment_table, ENROLMENTS_REPORT)

    def organisation_memberships(
        self, membership_uuids: Iterable[str]
    ) -> Iterator[tuple[str, OrganisationMembership | PartnersApiError]]:
        return self.fetch_many(
            membership_uuids, self.organisation_membership, ORGANISATION_MEMBERSHIP
        )

    def fetch_many(
        self, keys: Iterable[str], fetch: Callable[[str], T], endpoint: str
    ) -> Iterator[tuple[str, T | PartnersApiError]]:
        """Yields (key, answer or the error) for every key. What the response cache holds is
        read first, on this thread and in order: threads only slow reads that wait on no
        network. The rest is fetched on a bounded pool, yielded as each ends."""
        keys = list(keys)
        missing = []
        if self._caches(endpoint) and not self.refetch:
            self._local.fresh_keys = self._fresh_keys()
            for key in keys:
                self._local.cache_only = True
                try:
                    answer: T | PartnersApiError = fetch(key)
                except _NotCached:
                    missing.append(key)
                    continue
                except PartnersApiError as error:
                    answer = error
                finally:
                    # Off before the caller runs again: its own requests may go to the network.
                    self._local.cache_only = False
                yield key, answer
        else:
            missing = keys
        if not missing:
            return
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(missing))) as pool:
            futures = {pool.submit(fetch, key): key for key in missing}
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result()
                except PartnersApiError as error:
                    yield futures[future], error

    def clear_cache(self) -> None:
        if self._backend is not None:
            clear_backend(self._backend)

    def close(self) -> None:
        for parsed in self._thread_parsed:
            parsed.close()
        for backend in [self._backend, *self._thread_backends]:
            if backend is not None:
                backend.close()

    def __repr__(self) -> str:
        return f"PartnersApiClient(base_url={mask_url(self.base_url)!r})"

    # -- transport -------------------------------------------------------------------------

    def _caches(self, endpoint: str) -> bool:
        return self._backend is not None and endpoint not in UNCACHED_ENDPOINTS

    def _fresh_keys(self) -> frozenset[str] | None:
        """See ``cache.fresh_keys``: before the first batch, the cache is pruned. ``None``
        for Redis (each key is asked of it)."""
        if not isinstance(self._backend, requests_cache.SQLiteCache):
            return None
        prune, self._pruned = not self._pruned, True
        return fresh_keys(self._backend, prune=prune)

    def _session(self, endpoint: str) -> requests.Session:
        # Neither requests.Session nor a SQLite connection should be shared between threads:
        # each thread has its own session and cache connection to the same file, and SQLite's
        # own locking (with the busy timeout) orders their writes, across processes too.
        cached = self._caches(endpoint)
        name = "cached_session" if cached else "plain_session"
        session = getattr(self._local, name, None)
        if session is None:
            if not cached:
                session = requests.Session()
            else:
                # Checked at start-up; from here on a cache failure fails (and retries) a request.
                backend = make_cache_backend(self._cache, check=False)
                self._thread_backends.append(backend)
                self._local.backend = backend
                self._local.parsed = parsed_reports(backend)
                self._thread_parsed.append(self._local.parsed)
                session = cached_session(backend, self._cache_expiry, self._cache_key)
            session.headers.update(
                {"Accept": "application/json", "Content-Type": "application/json"}
            )
            session.max_redirects = MAX_REDIRECTS
            adapter = DeadlineAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if not any(name.lower().endswith("_proxy") for name in os.environ):
                # No proxy configured: skip requests' scan of the environment on every request.
                session.trust_env = False
            setattr(self._local, name, session)
        return session

    def _read(self, path: str, endpoint: str, parse: Callable[[Any, int, bytes], T]) -> T:
        return self._parse(self._fetch(self.base_url + path, endpoint), endpoint, parse)

    def _fetch(self, url: str, endpoint: str) -> requests.Response:
        """``_get``, its errors masked on the way out: every message of ``_get`` quotes the
        URL, and requests' own errors quote parts of it. The password of FL_PARTNERS_URL (or
        of the cache's URL) never leaves the client."""
        try:
            return self._get(url, endpoint)
        except _NotCached:
            raise
        except Exception as error:
            scrub_exception(error, self.base_url, self._cache)
            raise

    def _parse(
        self, response: requests.Response, endpoint: str, parse: Callable[[Any, int, bytes], T]
    ) -> T:
        self.stats.add(endpoint, "parses")
        raw = response.content
        try:
            if not is_json_response(response):
                raise MalformedResponseError(
                    f"Content-Type is {response.headers.get('Content-Type')!r}, not application/json",
                    endpoint=endpoint,
                    status=response.status_code,
                    body=raw,
                )
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError) as error:
                # RecursionError: arrays nested deeper than the parser's stack.
                reason = str(error) if isinstance(error, ValueError) else "nested too deeply"
                raise MalformedResponseError(
                    f"not valid JSON ({reason})",
                    endpoint=endpoint,
                    status=response.status_code,
                    body=raw,
                ) from None
            return parse(body, response.status_code, raw)
        except MalformedResponseError:
            self._forget(response)
            raise
        except Exception as error:
            # Whatever else one body can do to a parser costs this request, not the step.
            self._forget(response)
            raise MalformedResponseError(
                f"could not be parsed ({type(error).__name__})",
                endpoint=endpoint,
                status=response.status_code,
                body=raw,
            ) from None

    def _forget(self, response: requests.Response) -> None:
        """Never serve a bad body from the cache again."""
        backend = getattr(self._local, "backend", None)
        if backend is not None and getattr(response, "cache_key", None):
            forget_answer(backend, self._local.parsed, response.cache_key)

    def _get(self, url: str, endpoint: str) -> requests.Response:
        unauthorized = 0
        with Deadline(self.request_deadline) as deadline:

            def stop(state: RetryCallState) -> bool:
                return (
                    state.attempt_number >= self.max_attempts
                    or unauthorized >= MAX_UNAUTHORIZED_ATTEMPTS
                    or deadline.expired
                )

            def wait(state: RetryCallState) -> float:
                error = state.outcome.exception() if state.outcome else None
                if isinstance(error, _Unauthorized):
                    return 0.0
                if isinstance(error, _Retryable) and error.retry_after is not None:
                    seconds = min(error.retry_after, self._max_retry_after)
                else:
                    seconds = self._backoff(state)
                return max(0.0, min(seconds, deadline.remaining()))

            def count_retry(state: RetryCallState) -> None:
                self.stats.add(endpoint, "retries")
                if self.on_retry is not None:
                    error = state.outcome.exception() if state.outcome else None
                    self.on_retry(endpoint, state.attempt_number, error, state.upcoming_sleep)

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
                            return self._send(url, endpoint, deadline)
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
            except _DeadlineReached as error:
                self.stats.add(endpoint, "failures")
                raise DeadlineExceededError(
                    f"{endpoint}: no complete answer within the request deadline of "
                    f"{self.request_deadline:g} s ({error})",
                    endpoint=endpoint,
                ) from None
            except _Retryable as error:
                self.stats.add(endpoint, "failures")
                attempts = retrying.statistics.get("attempt_number", self.max_attempts)
                raise ApiUnavailableError(
                    f"{endpoint}: gave up after {attempts} attempts: {error}",
                    endpoint=endpoint,
                ) from None
            except PartnersApiError:
                self.stats.add(endpoint, "failures")
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, url: str, endpoint: str, deadline: Deadline) -> requests.Response:
        if deadline.expired:
            raise _DeadlineReached(f"time ran out before attempting {url}")
        token = self.tokens.token()
        limit = self.max_response_bytes[endpoint]

        def read_body(response: requests.Response, **_: Any) -> requests.Response:
            # A response hook runs before requests-cache stores the response, so a body over
            # its cap is neither held whole nor cached.
            read_body_capped(response, limit)
            return response

        remaining = max(deadline.remaining(), 0.001)
        cache_only = getattr(self._local, "cache_only", False)
        try:
            session = self._session(endpoint)
            if cache_only and not self._may_be_fresh(session, url):
                raise _NotCached  # without the cost of a whole cached request
            response = session.get(
                url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=(min(self.timeout[0], remaining), min(self.timeout[1], remaining)),
                hooks={"response": read_body},
                **({"only_if_cached": True} if cache_only else {}),
                **({"force_refresh": True} if self.refetch and self._caches(endpoint) else {}),
            )
        except _NotCached:
            raise
        except BodyTooLarge:
            self.stats.add(endpoint, "network")
            raise ResponseTooLargeError(
                f"{endpoint}: the answer from {url} is larger than {limit} bytes once "
                "decompressed, this endpoint's cap (max_response_bytes); reading stopped there",
                endpoint=endpoint,
            ) from None
        except Exception as error:
            if deadline.expired:
                self.stats.add(endpoint, "network")
                raise _DeadlineReached(f"{type(error).__name__} reading {url}") from None
            raise self._failure(error, url, endpoint, token) from None
        if cache_only and response.status_code == 504:
            raise _NotCached  # requests-cache's answer when it holds nothing fresh
        from_cache = getattr(response, "from_cache", False)
        if getattr(response, "revalidated", False):
            self.stats.add(endpoint, "network")  # a 304 renewed the cached answer
            self.stats.add(endpoint, "not_modified")
        else:
            self.stats.add(endpoint, "cache_hits" if from_cache else "network")
        if deadline.fired and not from_cache:
            # Its socket was shut mid-answer: the body may be cut short, so it is not kept.
            self._forget(response)
            raise _DeadlineReached(f"cut off reading {url}")
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

    def _may_be_fresh(self, session: requests_cache.CachedSession, url: str) -> bool:
        """Whether the cache may hold a fresh answer for ``url`` (a batch's cache-only pass)."""
        key = self._cache_key(requests.Request("GET", url).prepare())
        fresh_keys = getattr(self._local, "fresh_keys", None)
        if fresh_keys is not None:
            return key in fresh_keys
        return session.cache.contains(key=key)

    def _failure(self, error: Exception, url: str, endpoint: str, token: str) -> Exception:
        """What one failed exchange becomes: a retry, or an error that costs this request only."""
        if isinstance(error, requests.exceptions.ContentDecodingError):
            self.stats.add(endpoint, "network")
            return MalformedResponseError(
                "the body could not be decompressed (corrupt Content-Encoding)",
                endpoint=endpoint,
                status=None,
                body=b"",
            )
        if isinstance(error, requests.TooManyRedirects):
            self.stats.add(endpoint, "network")
            return PartnersApiError(
                f"{endpoint}: more than {MAX_REDIRECTS} redirects from {url}", endpoint=endpoint
            )
        if isinstance(
            error,
            requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError,
        ):
            self.stats.add(endpoint, "network")
            return _Retryable(f"{type(error).__name__} on {url}")
        if isinstance(error, CACHE_ERRORS):
            # A busy SQLite file or a Redis restart passes; retried like a network fault.
            return _Retryable(
                f"the response cache (FL_PARTNERS_CACHE) failed: {type(error).__name__}"
            )
        if isinstance(error, PartnersApiError):
            return error
        detail = str(error).replace(token, "***")[:200]
        return PartnersApiError(
            f"{endpoint}: reading {url} failed: {type(error).__name__}: {detail}",
            endpoint=endpoint,
        )


def check_base_url(base_url: str, *, allow_insecure_http: bool = False) -> None:
    """An https:// URL; plain http:// only to this machine, unless explicitly allowed: every
    request carries a bearer token."""
    problem = unreadable_url_reason(base_url)
    if problem is not None:
        raise ConfigurationError(
            f"FL_PARTNERS_URL {mask_url(base_url)!r} cannot be read: {problem}"
        )
    try:
        parts = urlsplit(base_url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(
            f"FL_PARTNERS_URL must be an https:// URL, got {mask_url(base_url)!r}"
        )
    if parts.scheme == "http" and not is_loopback_host(host) and not allow_insecure_http:
        raise ConfigurationError(
            f"FL_PARTNERS_URL {mask_url(base_url)!r} is plain http:// to {host!r}, which is not "
            "this machine: the bearer token would cross the network unencrypted. Use https://, "
            "or set FL_PARTNERS_ALLOW_INSECURE_HTTP=true if the network is trusted."
        )


def _retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
