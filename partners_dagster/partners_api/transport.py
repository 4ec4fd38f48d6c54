"""What keeps one HTTP exchange bounded: an overall deadline and a cap on the body's size.

``requests`` timeouts bound each socket operation, not the exchange: a server that sends one
byte every few seconds never trips them. A ``Deadline`` shuts the exchange's socket when its
time is up, wherever the exchange is blocked (waiting for headers, or reading a trickled body).
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import os
import socket
import threading
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class _Watchdog:
    """One thread that ends the deadlines that run out, for the whole process: a night makes
    tens of thousands of requests, and a timer thread started for each cost more than
    reading its answer. Deadlines are kept in a heap by expiry; one that ended normally is
    dropped when it comes to the top."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also in a forked child: the parent's deadlines and sockets are not the child's, and
        # the parent's thread (and perhaps its lock) did not come along.
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, deadline: Deadline) -> None:
        with self._condition:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="partners-api-deadlines", daemon=True
                )
                self._thread.start()
            while self._heap and self._heap[0][2].finished:  # keeps the heap short
                heapq.heappop(self._heap)
            entry = (deadline.expires_at, next(self._order), deadline)
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while True:
                    if not self._heap:
                        self._condition.wait()
                        continue
                    expires_at, _, deadline = self._heap[0]
                    if deadline.finished:
                        heapq.heappop(self._heap)
                        continue
                    wait = expires_at - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._condition.wait(wait)
            deadline._expire()  # outside the heap's lock: it takes the deadline's own


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG._reset)


class Deadline:
    """The time one call may take, across its attempts. Enter it around the code that sends:
    every connection used in this thread meanwhile is shut when the time is up."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._expires_at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._scheduled = False
        self._expired = False
        self.finished = False

    @property
    def fired(self) -> bool:
        """Whether the time ran out while a connection was watched (its socket was shut)."""
        return self._expired

    @property
    def expired(self) -> bool:
        return self._expired or self.remaining() <= 0

    @property
    def expires_at(self) -> float:
        return self._expires_at

    def remaining(self) -> float:
        return self._expires_at - time.monotonic()

    def __enter__(self) -> Deadline:
        _current.deadline = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        _current.deadline = None
        with self._lock:
            self.finished = True
            self._connections.clear()

    def watch(self, connection: HTTPConnection) -> None:
        with self._lock:
            if self._expired:
                _shut(connection)
                return
            self._connections.append(connection)
            schedule, self._scheduled = not self._scheduled, True
        if schedule:  # only once the network is used: a cache hit is never watched
            _WATCHDOG.schedule(self)

    def _expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self._expired = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)


def _shut(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked reading it


class _Watched:
    """Registers the connection with this thread's deadline on every request it carries
    (a pooled connection is reused, so connecting is not enough)."""

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        deadline: Deadline | None = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.watch(self)  # type: ignore[arg-type]
        result = super().request(*args, **kwargs)  # type: ignore[misc]
        if deadline is not None and deadline.expired:
            _shut(self)  # the time ran out while connecting, before there was a socket
        return result


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections obey the current thread's ``Deadline``."""

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy, **proxy_kwargs):  # type: ignore[no-untyped-def]
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"body larger than {limit} bytes once decompressed")
        self.limit = limit


CHUNK_BYTES = 64 * 1024


def read_body_capped(response: requests.Response, limit: int) -> None:
    """Read (and decompress) the body in chunks, failing as soon as it passes ``limit`` bytes,
    so that a small gzip body that inflates to gigabytes is never held whole."""
    if response._content is not False:  # already read: a cached response, or read before
        return
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
    except BaseException:
        response.close()
        raise
    response._content = b"".join(chunks)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
