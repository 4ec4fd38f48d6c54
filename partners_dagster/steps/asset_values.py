"""The value of each asset that hands one to the next, from the API and the database: one
function per asset, called by the asset and by the IO manager (defs/io_manager.py) when a run
needs an upstream value it did not compute. So an asset's inputs are wired here only.

Each function reads and writes nothing, except ``organisation_memberships`` when its caller
asks it to ``record`` (the asset, on a night that is not a dry run). What an asset writes
beside its value (the reports' remembered sizes) stays in the asset. No Dagster here.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from .course_reports import (
    CourseEnrolments,
    CourseRunsRead,
    fetch_course_enrolments,
    read_course_runs,
)
from .latest_enrolment import LatestEnrolmentSet, select_latest_enrolments
from .membership_lookup import MembershipLookups, look_up_memberships

if TYPE_CHECKING:  # the client and the repository load when a run uses them
    from ..partners_api.client import PartnersApiClient
    from ..teachcomputing.repository import TeachComputingRepository


def course_runs(
    client: PartnersApiClient, repository: TeachComputingRepository, ignored: Collection[str]
) -> CourseRunsRead:
    """Every course run the API lists, with whether Teach Computing knows its course (an
    activity holds its UUID) or ignores it."""
    return read_course_runs(client, repository.catalogue().activities["course_uuid"], ignored)


def course_enrolments(
    client: PartnersApiClient,
    repository: TeachComputingRepository,
    runs: pd.DataFrame,
    accept_sizes_of: Collection[str] = (),
) -> CourseEnrolments:
    """The reports of every run of a known course, each compared with its remembered size."""
    return fetch_course_enrolments(client, runs, repository.report_sizes(), accept_sizes_of)


def organisation_memberships(
    client: PartnersApiClient,
    repository: TeachComputingRepository,
    enrolments: CourseEnrolments,
    *,
    now: datetime,
    refresh_days: float | None,
    dagster_run_id: str,
    record: bool,
    ask_api: bool = True,
) -> MembershipLookups:
    """Tonight's unlinked memberships, asked of the API when new or due, else remembered;
    ``record``: every answer is remembered. ``ask_api`` False, ``refresh_days`` None and
    ``record`` False: what the membership memory holds, nothing asked or written (the IO
    manager's rebuild of what a night remembered)."""
    return look_up_memberships(
        client,
        repository,
        enrolments,
        dagster_run_id=dagster_run_id,
        now=now,
        refresh_days=refresh_days,
        record=record,
        ask_api=ask_api,
    )


def latest_enrolments(
    repository: TeachComputingRepository,
    enrolments: CourseEnrolments,
    *,
    links: pd.DataFrame | None = None,
    users: Collection[str] | None = None,
) -> LatestEnrolmentSet:
    """For every linked teacher (of ``users``, None: all) and known course, the enrolment that
    counts. ``links``: the linked memberships, when the caller has read them already."""
    if links is None:
        links = repository.linked_memberships()
    return select_latest_enrolments(
        enrolments, links, repository.catalogue().activities, users=users
    )
