"""The Partners API as a Dagster resource."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from ..privacy import mask_url, scrub_secrets
from ..settings import (
    DEFAULT_CACHE_EXPIRY_SECONDS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MEMBERSHIP_REFRESH_DAYS,
    DEFAULT_REQUEST_DEADLINE_SECONDS,
    ConfigurationError,
    parse_uuid_list,
)

if TYPE_CHECKING:
    from .client import PartnersApiClient


# Retries logged one by one, then every RETRY_LOG_EVERY-th: a night of 20% faults must not
# bury the run's log under thousands of lines.
RETRY_LOG_FIRST = 30
RETRY_LOG_EVERY = 100


class RetryLog:
    """Logs the client's retries as warnings while they happen (a run that retries for
    minutes is not silent), naming the endpoint, the attempt, the error and the wait."""

    def __init__(self, log: Any, *urls: str | None):
        self._log = log
        self._urls = urls  # whose passwords never show, even in pieces
        self._count = 0
        self._lock = threading.Lock()

    def __call__(
        self, endpoint: str, attempt: int, error: BaseException | None, wait: float
    ) -> None:
        with self._lock:
            self._count += 1
            count = self._count
        if count > RETRY_LOG_FIRST and count % RETRY_LOG_EVERY:
            return
        reason = (
            scrub_secrets(" ".join(str(error).split())[:300], *self._urls) if error else "no answer"
        )
        more = f" ({count} retries so far in this run)" if count > RETRY_LOG_FIRST else ""
        self._log.warning(
            f"Partners API {endpoint}: attempt {attempt} failed ({reason}); "
            f"retrying in {wait:.1f} s{more}"
        )


class PartnersApiResource(ConfigurableResource):
    """FutureLearn Partners API client with its response cache.

    Credentials come from ``dagster.EnvVar`` (see ``definitions.py``) and are never logged.
    """

    base_url: str = Field(description="API base URL (FL_PARTNERS_URL).")
    consumer_key: str = Field(description="JWT issuer (FL_PARTNERS_CONSUMER_KEY).")
    consumer_secret: str = Field(description="HS256 secret (FL_PARTNERS_CONSUMER_SECRET).")
    cache: str = Field(
        default="", description="SQLite file path or redis:// URL; empty disables the cache."
    )
    cache_expiry_seconds: int = Field(default=DEFAULT_CACHE_EXPIRY_SECONDS)
    ignored_course_uuids: str = Field(
        default="", description="Comma-separated course UUIDs never reported."
    )
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY, description="Concurrent API requests."
    )
    membership_refresh_days: float = Field(
        default=DEFAULT_MEMBERSHIP_REFRESH_DAYS,
        description="How often an unlinked membership already looked up is asked for again, "
        "in days (FL_PARTNERS_MEMBERSHIP_REFRESH_DAYS; 0 = every night).",
    )
    read_timeout_seconds: float = Field(default=60.0)
    max_attempts: int = Field(
        default=6, description="Attempts per request on 5xx, 429 and timeouts."
    )
    backoff_initial_seconds: float = Field(
        default=0.5, description="First retry wait; doubles, with jitter."
    )
    request_deadline_seconds: float = Field(
        default=DEFAULT_REQUEST_DEADLINE_SECONDS,
        description="Most time one request may take, retries and slow answers included.",
    )
    max_response_bytes: dict[str, int] = Field(
        default_factory=dict,
        description="Per endpoint (course_runs, course_run, course_enrolments_report, "
        "organisation_membership), the largest decompressed body accepted; unset keeps the "
        "default.",
    )
    allow_insecure_http: bool = Field(
        default=False,
        description="Allow a plain http:// base URL to a host other than this machine "
        "(FL_PARTNERS_ALLOW_INSECURE_HTTP).",
    )

    # The client's module (requests, requests-cache, pandas) is imported when a run sets the
    # resource up, not when the definitions load: the code server, the daemon and each run
    # process load them, and most never call the API.
    _client: Any = PrivateAttr(default=None)

    def __repr_args__(self):
        # pydantic builds repr() and str() from these: the secret never shows, nor a
        # password inside the cache URL.
        for name, value in super().__repr_args__():
            if name == "consumer_secret":
                yield name, "***"
            else:
                yield name, (mask_url(value) if isinstance(value, str) else value)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        for name, value in (
            ("FL_PARTNERS_URL", self.base_url),
            ("FL_PARTNERS_CONSUMER_KEY", self.consumer_key),
            ("FL_PARTNERS_CONSUMER_SECRET", self.consumer_secret),
        ):
            if not value or not value.strip():
                raise ConfigurationError(f"{name} is empty")
        parse_uuid_list(self.ignored_course_uuids)  # a bad entry fails the run at its start
        from .client import PartnersApiClient

        self._client = PartnersApiClient(
            self.base_url,
            self.consumer_key,
            self.consumer_secret,
            cache=self.cache or None,
            cache_expiry_seconds=self.cache_expiry_seconds,
            max_concurrency=self.max_concurrency,
            read_timeout=self.read_timeout_seconds,
            max_attempts=self.max_attempts,
            backoff_initial=self.backoff_initial_seconds,
            request_deadline=self.request_deadline_seconds,
            max_response_bytes=self.max_response_bytes,
            allow_insecure_http=self.allow_insecure_http,
        )
        if context is not None and context.log is not None:
            self._client.on_retry = RetryLog(context.log, self.base_url, self.cache)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()

    @property
    def client(self) -> PartnersApiClient:
        if self._client is None:  # used outside a Dagster run (tests, scripts)
            self.setup_for_execution(None)  # type: ignore[arg-type]
        return self._client

    def client_for(self, run_options: Any) -> PartnersApiClient:
        """The client, asking the API again this run when ``run_options.refetch``."""
        client = self.client
        client.refetch = bool(getattr(run_options, "refetch", False))
        return client

    @property
    def ignored_courses(self) -> frozenset[str]:
        return parse_uuid_list(self.ignored_course_uuids)
