"""Client for the FutureLearn Partners API (see docs/partners-api.md)."""

import importlib
from typing import TYPE_CHECKING

from .errors import (
    ApiUnavailableError,
    DeadlineExceededError,
    MalformedResponseError,
    NotFoundError,
    PartnersApiError,
    ResponseTooLargeError,
    UnauthorizedError,
)

if TYPE_CHECKING:
    from .client import PartnersApiClient
    from .records import (
        CourseEnrolment,
        CourseRun,
        EnrolmentReport,
        OrganisationMembership,
        Rejection,
    )
    from .stats import RequestStats

# The client and the records (requests, requests-cache, pandas) load on first use, so that
# loading the definitions, or importing an error class, stays light.
_LAZY = {
    "PartnersApiClient": "client",
    "RequestStats": "stats",
    "CourseEnrolment": "records",
    "CourseRun": "records",
    "EnrolmentReport": "records",
    "OrganisationMembership": "records",
    "Rejection": "records",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApiUnavailableError",
    "CourseEnrolment",
    "CourseRun",
    "DeadlineExceededError",
    "EnrolmentReport",
    "MalformedResponseError",
    "NotFoundError",
    "OrganisationMembership",
    "PartnersApiClient",
    "PartnersApiError",
    "Rejection",
    "RequestStats",
    "ResponseTooLargeError",
    "UnauthorizedError",
]
