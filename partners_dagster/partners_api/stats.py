"""The client's request statistics, per endpoint."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict

from .endpoints import ENDPOINTS


class RequestStats:
    """Per-endpoint counters, thread-safe: network requests (``not_modified`` of them were
    answered ``304``, which renewed a cached answer), cache hits, bodies parsed (an answer
    whose parsed form is kept is not parsed again), retries, failures."""

    FIELDS = ("network", "not_modified", "cache_hits", "parses", "retries", "failures")

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
