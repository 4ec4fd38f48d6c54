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

    @property
    def engine(self) -> Engine:
        # SQLAlchemy and the repository are imported on first use, not when the definitions
        # load (see PartnersApiResource._client).
        from .engine import shared_engine

        return shared_engine(self.database_url)

    def repository(self) -> TeachComputingRepository:
        from .repository import TeachComputingRepository

        return TeachComputingRepository(self.engine)

    def __repr_args__(self):
        # pydantic builds repr() and str() from these: the URL's password never shows.
        for name, value in super().__repr_args__():
            yield name, (mask_url(value) if isinstance(value, str) else value)
