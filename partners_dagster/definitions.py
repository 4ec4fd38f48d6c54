"""The Dagster definitions: ``partners_dagster.defs`` (also ``partners_dagster.definitions:defs``)."""

from __future__ import annotations

import os

import dagster as dg

from . import settings
from .defs.jobs import update_memberships_job, update_progress_job
from .defs.memberships import (
    course_enrolments,
    course_runs,
    membership_links,
    organisation_memberships,
)
from .defs.progress import achievement_progress, latest_enrolments
from .defs.schedules import update_memberships_schedule, update_progress_schedule
from .partners_api.resource import PartnersApiResource
from .teachcomputing.resource import TeachComputingDatabaseResource


def _env_or(name: str, default: str) -> str | dg.EnvVar:
    # EnvVar keeps a value that may hold a password (a database or redis URL) out of the
    # run config shown in the UI; the embedded default holds none.
    return dg.EnvVar(name) if os.environ.get(name, "").strip() else default


def build_resources() -> dict:
    return {
        "partners_api": PartnersApiResource(
            base_url=dg.EnvVar("FL_PARTNERS_URL"),
            consumer_key=dg.EnvVar("FL_PARTNERS_CONSUMER_KEY"),
            consumer_secret=dg.EnvVar("FL_PARTNERS_CONSUMER_SECRET"),
            cache=_env_or("FL_PARTNERS_CACHE", settings.default_cache_location()),
            cache_expiry_seconds=settings.cache_expiry_seconds(),
            ignored_course_uuids=settings.ignored_course_uuids_text(),
            max_concurrency=settings.max_concurrency(),
        ),
        "teachcomputing_db": TeachComputingDatabaseResource(
            database_url=_env_or("TEACHCOMPUTING_DATABASE_URL", settings.default_database_url())
        ),
    }


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """The definitions, with settings read from the environment now (``resources`` replaces
    the resources built from it, for tests and tools)."""
    return dg.Definitions(
        assets=[
            course_runs,
            course_enrolments,
            organisation_memberships,
            membership_links,
            latest_enrolments,
            achievement_progress,
        ],
        jobs=[update_memberships_job, update_progress_job],
        schedules=[update_memberships_schedule, update_progress_schedule],
        resources=resources if resources is not None else build_resources(),
    )


defs = build_definitions()
