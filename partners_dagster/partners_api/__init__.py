"""Client for the FutureLearn Partners API (see shared/partners-api.md)."""

from .client import PartnersApiClient, RequestStats
from .errors import (
    ApiUnavailableError,
    DeadlineExceededError,
    MalformedResponseError,
    NotFoundError,
    PartnersApiError,
    ResponseTooLargeError,
    UnauthorizedError,
)
from .records import CourseEnrolment, CourseRun, EnrolmentReport, OrganisationMembership, Rejection

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
