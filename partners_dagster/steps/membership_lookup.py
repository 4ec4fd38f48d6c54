"""Step 1's unit of work: tonight's unlinked memberships, asked of the API or taken from the
membership memory, every answer remembered. No Dagster: the asset maps the result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from .course_reports import CourseEnrolments
from .membership_matching import (
    FORGOTTEN,
    LookupPlan,
    enrolment_counts,
    erase_forgotten,
    fetch_memberships,
    plan_membership_lookups,
    remembered_answers,
)

if TYPE_CHECKING:  # the client and the repository load when a run uses them
    from ..partners_api.client import PartnersApiClient
    from ..teachcomputing.repository import TeachComputingRepository


# How many API answers are asked for between two writes to the membership memory.
RECORD_EVERY = 2_000


@dataclass(frozen=True)
class MembershipLookups:
    memberships: pd.DataFrame  # MEMBERSHIP_COLUMNS + source (api or memory), one per membership
    plan: LookupPlan
    fetched: pd.DataFrame  # what the API answered tonight (fetch_status found/not_found/failed)

    def fetched_count(self, status: str) -> int:
        return int((self.fetched["fetch_status"] == status).sum())


def look_up_memberships(
    client: PartnersApiClient,
    repository: TeachComputingRepository,
    course_enrolments: CourseEnrolments,
    *,
    dagster_run_id: str,
    now: datetime,
    refresh_days: float | None,
    record: bool = True,
    ask_api: bool = True,
) -> MembershipLookups:
    """Ask the API about the memberships that are new or due, remember every answer (with how
    many enrolments and courses each carries tonight), and return those answers with the
    remembered ones. A due refresh that failed is matched on its last answer tonight, and
    stays due. An answer that names a forgotten user is stored without its email.
    ``record`` False (a dry run): the API is asked, and nothing is remembered. ``ask_api``
    False: the remembered answers only (``refresh_days`` None: all of them)."""
    lookups = repository.membership_lookups()
    users = repository.users()
    plan = plan_membership_lookups(
        course_enrolments.enrolments,
        repository.linked_memberships(),
        lookups,
        now=now,
        refresh_days=refresh_days,
    )
    to_fetch = plan.to_fetch if ask_api else []
    counts = enrolment_counts(
        course_enrolments.enrolments, [*to_fetch, *plan.remembered["membership_uuid"]]
    ).set_index("membership_uuid", drop=False)
    # The API's answers are kept nowhere else (the response cache leaves memberships out):
    # each share is remembered as soon as it is in, so a run that dies keeps what it asked.
    parts = []
    for start in range(0, len(to_fetch), RECORD_EVERY):
        share = to_fetch[start : start + RECORD_EVERY]
        part = erase_forgotten(fetch_memberships(client, share), users)
        if record:
            repository.record_lookups(part, dagster_run_id, counts.loc[share])
        parts.append(part)
    fetched = (
        pd.concat(parts, ignore_index=True).sort_values("membership_uuid", ignore_index=True)
        if parts
        else erase_forgotten(fetch_memberships(client, []), users)
    )
    remembered = plan.remembered["membership_uuid"]
    if record:
        repository.record_lookups(fetched.iloc[0:0], dagster_run_id, counts.loc[remembered])
    fetched = fetched.assign(
        fetch_status=fetched["fetch_status"].where(~fetched["forgotten"], FORGOTTEN)
    ).drop(columns="forgotten")
    failed = set(fetched.loc[fetched["fetch_status"] == "failed", "membership_uuid"])
    stale = remembered_answers(lookups, failed)
    memberships = pd.concat(
        [
            fetched[~fetched["membership_uuid"].isin(stale["membership_uuid"])].assign(
                source="api"
            ),
            plan.remembered.assign(source="memory"),
            stale.assign(source="memory"),
        ],
        ignore_index=True,
    ).sort_values("membership_uuid", ignore_index=True)
    return MembershipLookups(memberships, plan, fetched)
