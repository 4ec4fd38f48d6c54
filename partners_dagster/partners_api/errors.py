"""Errors raised by the Partners API client. Each names the endpoint it came from."""

from __future__ import annotations


class PartnersApiError(Exception):
    """Base class: something went wrong talking to the Partners API."""

    def __init__(self, message: str, *, endpoint: str, status: int | None = None):
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status


class NotFoundError(PartnersApiError):
    """The API answered 404: the resource does not exist (or is no longer visible)."""


class UnauthorizedError(PartnersApiError):
    """The API refused our token even after it was renewed."""


class ApiUnavailableError(PartnersApiError):
    """Retries ran out on 5xx, 429, timeouts or dropped connections."""


class MalformedResponseError(PartnersApiError):
    """The body is not JSON, or not the shape docs/partners-api.md describes."""

    def __init__(self, reason: str, *, endpoint: str, status: int | None, body: bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        excerpt = " ".join(text[:120].split())
        super().__init__(
            f"{endpoint}: malformed response (HTTP {status}): {reason}; body starts {excerpt!r}",
            endpoint=endpoint,
            status=status,
        )
        self.reason = reason
        self.excerpt = excerpt


class DeadlineExceededError(ApiUnavailableError):
    """No complete answer within the request's overall deadline (retries included)."""


class ResponseTooLargeError(PartnersApiError):
    """The body, once decompressed, is larger than the endpoint's cap; reading stopped there."""
