"""The Teach Computing database as a Dagster resource."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from pydantic import Field

from ..privacy import mask_url

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from .repository import TeachComputingRepository


class TeachComputingDatabaseResource(ConfigurableResource):
    """The Teach Computing database (TEACHCOMPUTING_DATABASE_URL)."""

    database_url: str = Field(description="SQLAlchemy URL of the Teach Computing database.")
    lock_timeout_seconds: float | None = Field(
        default=None,
        description="How long a statement waits for a row lock before its course or link is "
        "skipped and reported (unset: TEACHCOMPUTING_DATABASE_LOCK_TIMEOUT_SECONDS).",
    )
    statement_timeout_seconds: float | None = Field(
        default=None,
        description="How long one statement may run on PostgreSQL "
        "(unset: TEACHCOMPUTING_DATABASE_STATEMENT_TIMEOUT_SECONDS).",
    )

    @property
    def engine(self) -> Engine:
        # SQLAlchemy and the repository are imported on first use, not when the definitions
        # load (see PartnersApiResource._client).
        from .. import settings
        from .engine import shared_engine

        return shared_engine(
            self.database_url,
            self.lock_timeout_seconds or settings.database_lock_timeout_seconds(),
            self.statement_timeout_seconds or settings.database_statement_timeout_seconds(),
        )

    def repository(self) -> TeachComputingRepository:
        from .repository import TeachComputingRepository

        return TeachComputingRepository(self.engine)

    def __repr_args__(self):
        # pydantic builds repr() and str() from these: the URL's password never shows.
        for name, value in super().__repr_args__():
            yield name, (mask_url(value) if isinstance(value, str) else value)
