"""Parsed reports kept beside the response cache, so that an unchanged report is not parsed
again: a report whose answer a ``304`` renewed, or that step 2 reads from the cache, is
served from here when its ETag is the one it was parsed from.

Each entry is held under the response's cache key (one per report URL, so an entry is
replaced, not added to, when a report changes) and holds the ETag it was parsed from; it
is used only when that ETag is the answer's. Same backend as the response cache: a table
``parsed_reports`` in its SQLite file, or keys ``partners_api:parsed:…`` in its Redis.
"""

from __future__ import annotations

import contextlib
import sqlite3

import redis
import requests_cache
from requests_cache.backends.sqlite import SQLiteDict

from .records import EnrolmentTable, TableFormatError

SQLITE_TABLE = "parsed_reports"
REDIS_NAMESPACE = "partners_api:parsed"
# What a failing store costs: a parse, never the request.
STORE_ERRORS = (redis.RedisError, sqlite3.Error, OSError)


def _pack(etag: str, table: EnrolmentTable) -> bytes:
    return etag.encode() + b"\n" + table.to_bytes()


def _unpack(value: bytes, etag: str) -> EnrolmentTable | None:
    stored, _, data = bytes(value).partition(b"\n")
    if stored != etag.encode():
        return None
    try:
        return EnrolmentTable.from_bytes(data)
    except TableFormatError:
        return None


class ParsedReports:
    """Get and put parsed reports by cache key and ETag. Thread-safe."""

    def __init__(self, backend: requests_cache.BaseCache, keep_seconds: int):
        """``keep_seconds``: how long an entry outlives its last use (Redis's TTL)."""
        self.keep_seconds = keep_seconds
        self._sqlite: SQLiteDict | None = None
        self._redis: redis.Redis | None = None
        if isinstance(backend, requests_cache.SQLiteCache):
            self._sqlite = SQLiteDict(
                backend.db_path,
                table_name=SQLITE_TABLE,
                serializer=None,
                wal=True,
                fast_save=True,
                busy_timeout=60_000,
            )
        elif isinstance(backend, requests_cache.RedisCache):
            self._redis = backend.responses.connection

    def get(self, key: str, etag: str) -> EnrolmentTable | None:
        with contextlib.suppress(*STORE_ERRORS):
            if self._sqlite is not None:
                with contextlib.suppress(KeyError):
                    return _unpack(self._sqlite[key], etag)
            elif self._redis is not None:
                name = f"{REDIS_NAMESPACE}:{key}"
                pipe = self._redis.pipeline(transaction=False)
                pipe.get(name)
                pipe.expire(name, self.keep_seconds)  # used: kept as long again
                value, _ = pipe.execute()
                if value is not None:
                    return _unpack(value, etag)
        return None

    def put(self, key: str, etag: str, table: EnrolmentTable) -> None:
        with contextlib.suppress(*STORE_ERRORS):
            if self._sqlite is not None:
                self._sqlite[key] = _pack(etag, table)
            elif self._redis is not None:
                self._redis.set(
                    f"{REDIS_NAMESPACE}:{key}", _pack(etag, table), ex=self.keep_seconds
                )

    def delete(self, key: str) -> None:
        with contextlib.suppress(*STORE_ERRORS):
            if self._sqlite is not None:
                self._sqlite.bulk_delete([key])
            elif self._redis is not None:
                self._redis.delete(f"{REDIS_NAMESPACE}:{key}")

    def prune(self, responses_table: str) -> None:
        """Drop the SQLite entries whose answer the response cache no longer holds (Redis
        drops them itself, by their TTL)."""
        if self._sqlite is None:
            return
        with contextlib.suppress(*STORE_ERRORS), self._sqlite.connection(commit=True) as con:
            con.execute(
                f"DELETE FROM {SQLITE_TABLE} WHERE key NOT IN (SELECT key FROM {responses_table})"
            )

    def clear(self) -> None:
        with contextlib.suppress(*STORE_ERRORS):
            if self._sqlite is not None:
                self._sqlite.clear()
            elif self._redis is not None:
                names = list(self._redis.scan_iter(f"{REDIS_NAMESPACE}:*"))
                if names:
                    self._redis.delete(*names)

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
