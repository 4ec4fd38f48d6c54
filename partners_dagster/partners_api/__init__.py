"""Client for the FutureLearn Partners API (see shared/partners-api.md)."""

from .client import PartnersApiClient, RequestStats
from .errors import (
    ApiUnavailableError,
    MalformedResponseError,
    NotFoundError,
    PartnersApiError,
    UnauthorizedError,
)
from .records import CourseEnrolment, CourseRun, EnrolmentReport, OrganisationMembership, Rejection

__all__ = [
    "ApiUnavailableError",
    "CourseEnrolment",
    "CourseRun",
    "EnrolmentReport",
    "MalformedResponseError",
    "NotFoundError",
    "OrganisationMembership",
    "PartnersApiClient",
    "PartnersApiError",
    "Rejection",
    "RequestStats",
    "UnauthorizedError",
]
