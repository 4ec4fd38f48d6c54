"""The client's response cache: its backend (a SQLite file or Redis), its keys, what it
stores, how long an answer is kept past its expiry, and the parsed reports kept beside it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests
import requests_cache

from ..privacy import mask_url, scrub_secrets, unreadable_url_reason
from ..settings import ConfigurationError
from .endpoints import ORGANISATION_MEMBERSHIP
from .parsed_cache import ParsedReports

# Never served from or stored in the response cache: a membership's answer (a 404 included)
# is kept in the membership memory, which decides when to ask again. Storing tens of
# thousands of them in the cache as well cost more than asking.
UNCACHED_ENDPOINTS = frozenset({ORGANISATION_MEMBERSHIP})
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# An answer past its expiry is kept this long, to be revalidated with its ETag (a 304 renews
# it with no body sent); one unused for longer is dropped (SQLite: before a batch; Redis: by
# the TTL of its key). Its parsed form is kept as long, beside it.
STALE_KEEP_SECONDS = 8 * 24 * 60 * 60
# What a failing cache raises: a busy SQLite file, a Redis restart.
CACHE_ERRORS = (redis.RedisError, sqlite3.Error)


class _RedactedHistory:
    """requests-cache redacts ``Authorization`` from the request it stores, but not from the
    requests of ``response.history``: a same-host redirect would store the bearer token."""

    def save_response(self, response, cache_key=None, expires=None):  # type: ignore[no-untyped-def]
        for earlier in getattr(response, "history", None) or ():
            request = getattr(earlier, "request", None)
            if request is not None and request.headers is not None:
                request.headers.pop("Authorization", None)
        super().save_response(response, cache_key, expires)  # type: ignore[misc]


class _SQLiteCache(_RedactedHistory, requests_cache.SQLiteCache):
    pass


class _RedisCache(_RedactedHistory, requests_cache.RedisCache):
    pass


def _private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (it holds personal data), or tighten it.
    SQLite gives its -wal and -shm files the mode of the database file."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if name.exists() and name.stat().st_mode & 0o077:
                name.chmod(0o600)
        except OSError:
            pass  # not ours to change: SQLite will say if it cannot use it


def make_cache_backend(
    location: str | None, *, check: bool = True
) -> requests_cache.BaseCache | None:
    """A SQLite file path, or a ``redis://`` URL; ``None`` or ``""`` means no cache. With
    ``check``, the cache is reached now, so that a wrong location fails at start-up."""
    if not location:
        return None
    if location.startswith(REDIS_SCHEMES):
        problem = unreadable_url_reason(location)
        if problem is None:
            try:
                connection = redis.Redis.from_url(
                    location, socket_connect_timeout=5, socket_timeout=30
                )
                if check:
                    connection.ping()
                # Kept past their expiry, to be revalidated (see STALE_KEEP_SECONDS).
                return _RedisCache(
                    namespace="partners_api", connection=connection, ttl_offset=STALE_KEEP_SECONDS
                )
            except Exception as error:
                # redis-py may quote part of a password it misread ("Port could not be cast
                # to integer value as '...'").
                problem = scrub_secrets(f"{type(error).__name__}: {error}", location)[:200]
        # Raised outside the except block: the library's error is not chained to it.
        raise ConfigurationError(
            f"FL_PARTNERS_CACHE: cannot use the Redis cache at {mask_url(location)!r}: {problem}"
        )
    path = Path(location)
    if not path.suffix:
        path = path.with_name(path.name + ".sqlite")  # what requests-cache would open
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _private_file(path)
        # WAL lets readers and the writer overlap; fast_save skips the fsync per response
        # (a cache lost in a crash is refilled from the API, nothing else is lost); another
        # process writing the same file (two nights at once) is waited for, not an error.
        backend = _SQLiteCache(path, wal=True, fast_save=True, busy_timeout=60_000)
        if check:
            backend.responses.count()  # opens the file now, so a bad path fails here
            _private_file(path)  # the -wal and -shm files now exist
    except Exception as error:
        raise ConfigurationError(
            f"FL_PARTNERS_CACHE: cannot open cache file {str(path)!r}: {error}"
        ) from None
    return backend


def is_json_response(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").split(";")[0].strip() == "application/json"


def cache_key_function(consumer_key: str) -> Callable[..., str]:
    """Keys of method and URL, in the consumer key's namespace: another consumer (or a wrong
    key) is never served our answers. Never the secret or the token. (Our URLs are canonical;
    requests-cache's default key normalises every request, a cost paid on each cache hit.)"""
    namespace = hashlib.sha256(consumer_key.encode()).hexdigest()[:16]

    def cache_key(request: requests.PreparedRequest, **_: Any) -> str:
        text = f"{namespace} {request.method} {request.url}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    return cache_key


def _is_cacheable(response: requests.Response) -> bool:
    """No answer but a successful JSON one is stored (``allowable_codes`` keeps the other
    statuses out). requests-cache also deletes what it holds for a request whose answer
    this refuses, so a 504 of a cache-only read or a 500 while revalidating must pass:
    the expired answer stays, to be revalidated."""
    return response.status_code != 200 or is_json_response(response)


def cached_session(
    backend: requests_cache.BaseCache,
    expire_after: int,
    key_fn: Callable[..., str],
) -> requests_cache.CachedSession:
    return requests_cache.CachedSession(
        backend=backend,
        expire_after=expire_after,
        # The API says max-age=0; we impose our own expiry instead. Past it, an
        # answer with an ETag is revalidated (If-None-Match): a 304 renews it.
        cache_control=False,
        allowable_codes=(200,),
        allowable_methods=("GET",),
        filter_fn=_is_cacheable,
        # Not part of the cache key, and redacted from what is stored.
        ignored_parameters=("Authorization",),
        match_headers=False,
        key_fn=key_fn,
        autoclose=False,
    )


def parsed_reports(backend: requests_cache.BaseCache) -> ParsedReports:
    """The parsed forms kept beside ``backend``'s answers, as long as they are."""
    return ParsedReports(backend, STALE_KEEP_SECONDS)


def clear_backend(backend: requests_cache.BaseCache) -> None:
    backend.clear()
    parsed = parsed_reports(backend)
    parsed.clear()
    parsed.close()


def forget_answer(backend: requests_cache.BaseCache, parsed: ParsedReports, key: str) -> None:
    """Never serve the answer under ``key`` from the cache again."""
    # A failing cache cannot keep it either way; the request fails regardless.
    with contextlib.suppress(*CACHE_ERRORS):
        backend.delete(key)
    parsed.delete(key)


def fresh_keys(backend: requests_cache.SQLiteCache, *, prune: bool) -> frozenset[str] | None:
    """The keys of a SQLite cache's fresh answers, in one statement, so that a batch
    knows at a glance which answers it can read without asking the API; the expired
    ones stay, to be revalidated on the pool. With ``prune``, answers unused for
    ``STALE_KEEP_SECONDS`` past their expiry go first, and parsed forms whose answer went.
    ``None`` when this fails (it only costs speed)."""
    now = time.time()
    table = backend.responses.table_name
    with contextlib.suppress(sqlite3.Error):
        if prune:
            with backend.responses.connection(commit=True) as con:
                con.execute(f"DELETE FROM {table} WHERE expires <= ?", (now - STALE_KEEP_SECONDS,))
            parsed = parsed_reports(backend)
            parsed.prune(table)
            parsed.close()
        with backend.responses.connection() as con:
            rows = con.execute(
                f"SELECT key FROM {table} WHERE expires IS NULL OR expires > ?", (now,)
            ).fetchall()
        return frozenset(key for (key,) in rows)
    return None
