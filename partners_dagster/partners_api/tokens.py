"""The short-lived JWTs the Partners API wants on every request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import jwt

TOKEN_LIFETIME_SECONDS = 90
# Renew this long before expiry so a token never expires in flight (slow
# request, clock skew between us and the API).
RENEW_MARGIN_SECONDS = 30


class TokenSource:
    """Makes HS256 tokens (iss = consumer key, iat = now, exp = now + 90 s) and reuses each
    until it is within ``RENEW_MARGIN_SECONDS`` of expiry. Thread-safe."""

    def __init__(
        self,
        consumer_key: str,
        consumer_secret: str,
        *,
        lifetime_seconds: int = TOKEN_LIFETIME_SECONDS,
        renew_margin_seconds: int = RENEW_MARGIN_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        if not consumer_key or not consumer_secret:
            raise ValueError("the consumer key and secret must not be empty")
        self._key = consumer_key
        self._secret = consumer_secret
        self._lifetime = lifetime_seconds
        self._margin = renew_margin_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.tokens_made = 0

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - self._margin:
                self._make(now)
            return self._token

    def invalidate(self, token: str) -> None:
        """The API refused ``token``: make a new one next time (unless already renewed)."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _make(self, now: float) -> None:
        issued_at = int(now)
        self._expires_at = issued_at + self._lifetime
        self._token = jwt.encode(
            {"iss": self._key, "iat": issued_at, "exp": issued_at + self._lifetime},
            self._secret,
            algorithm="HS256",
        )
        self.tokens_made += 1

    def __repr__(self) -> str:  # never show the secret or the token
        return f"TokenSource(consumer_key={self._key!r})"
