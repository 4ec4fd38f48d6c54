"""Organisation memberships: which to fetch, and which Teach Computing user each names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from ..partners_api.errors import NotFoundError, PartnersApiError
from ..rules import lookup_due_at, lookups_naming_forgotten_users, match_user, user_ids_by_email

if TYPE_CHECKING:
    from ..partners_api.client import PartnersApiClient

MEMBERSHIP_COLUMNS = [
    "membership_uuid",
    "learner_uuid",
    "external_learner_id",
    "fetch_status",
    "error",
]


@dataclass(frozen=True)
class LookupPlan:
    """Tonight's unlinked memberships: those to ask the API about, and the rest answered
    from the membership memory (what the API said last time)."""

    on_reports: int
    already_linked: int
    to_fetch: list[str]  # never looked up, or their lookup is due
    remembered: pd.DataFrame  # MEMBERSHIP_COLUMNS, from partners_dagster_membership_lookups
    never_looked_up: int


def plan_membership_lookups(
    enrolments: pd.DataFrame,
    linked: pd.DataFrame,
    lookups: pd.DataFrame,
    *,
    now: datetime,
    refresh_days: float | None,
) -> LookupPlan:
    """Each membership on any report that no user holds, once however many runs it is on:
    fetched when it was never looked up or its lookup is due (``lookup_due_at``), else taken
    from ``lookups`` (membership_uuid, status, learner_uuid, external_learner_id,
    fetched_at), to be matched again against the users as they are now. ``refresh_days``
    None: nothing remembered is due (a read-only view of what the memory holds)."""
    seen = set(pd.unique(enrolments["membership_uuid"].to_numpy()))
    unlinked = seen - set(linked["membership_uuid"])
    known = lookups[lookups["membership_uuid"].isin(unlinked)]
    due = (
        []
        if refresh_days is None
        else [
            m
            for m, fetched_at in zip(known["membership_uuid"], known["fetched_at"], strict=True)
            if lookup_due_at(m, fetched_at, refresh_days) <= now
        ]
    )
    remembered = known[~known["membership_uuid"].isin(due)]
    never = unlinked - set(known["membership_uuid"])
    return LookupPlan(
        on_reports=len(seen),
        already_linked=len(seen) - len(unlinked),
        to_fetch=sorted(never | set(due)),
        remembered=as_memberships(remembered),
        never_looked_up=len(never),
    )


def fetch_memberships(client: PartnersApiClient, membership_uuids: list[str]) -> pd.DataFrame:
    """One row per membership: ``fetch_status`` is found, not_found (404) or failed."""
    rows = []
    for membership_uuid, result in client.organisation_memberships(membership_uuids):
        if isinstance(result, NotFoundError):
            rows.append((membership_uuid, None, None, "not_found", None))
        elif isinstance(result, PartnersApiError):
            rows.append((membership_uuid, None, None, "failed", str(result)))
        else:
            rows.append(
                (membership_uuid, result.learner_uuid, result.external_learner_id, "found", None)
            )
    return pd.DataFrame(rows, columns=MEMBERSHIP_COLUMNS).sort_values(
        "membership_uuid", ignore_index=True
    )


@dataclass(frozen=True)
class MembershipMatches:
    links: pd.DataFrame  # membership_uuid, user_id, matched_by
    unmatched: pd.DataFrame  # membership_uuid, external_learner_id
    ambiguous: pd.DataFrame  # membership_uuid, external_learner_id, candidates


def match_memberships(memberships: pd.DataFrame, users: pd.DataFrame) -> MembershipMatches:
    """Match each found membership to the user its ``external_learner_id`` names (docs/rules.md,
    "Memberships"). ``users``: id, email (may be null), forgotten. Forgotten users are never
    matched; users without an email only by id; a value naming two users is ambiguous."""
    found = memberships[memberships["fetch_status"] == "found"]
    matchable = users[~users["forgotten"].astype(bool)]
    user_ids = set(matchable["id"])
    by_email = user_ids_by_email(matchable["id"], matchable["email"])
    links, unmatched, ambiguous = [], [], []
    for membership_uuid, external_id in zip(
        found["membership_uuid"], found["external_learner_id"], strict=True
    ):
        match = match_user(external_id, user_ids, by_email)
        if match.user_id is not None:
            links.append((membership_uuid, match.user_id, match.matched_by))
        elif match.matched_by == "ambiguous":
            ambiguous.append((membership_uuid, external_id, ", ".join(match.candidates)))
        else:
            unmatched.append((membership_uuid, external_id))
    return MembershipMatches(
        links=pd.DataFrame(links, columns=["membership_uuid", "user_id", "matched_by"]),
        unmatched=pd.DataFrame(unmatched, columns=["membership_uuid", "external_learner_id"]),
        ambiguous=pd.DataFrame(
            ambiguous, columns=["membership_uuid", "external_learner_id", "candidates"]
        ),
    )


def enrolment_counts(enrolments: pd.DataFrame, membership_uuids: list[str]) -> pd.DataFrame:
    """membership_uuid, enrolments, courses: what each of ``membership_uuids`` carries on
    tonight's reports (runs of known courses), for support staff's list of the unmatched."""
    mine = enrolments[enrolments["membership_uuid"].isin(membership_uuids)]
    counts = mine.groupby("membership_uuid").agg(
        enrolments=("run_uuid", "size"), courses=("course_uuid", "nunique")
    )
    return (
        counts.reindex(membership_uuids, fill_value=0).rename_axis("membership_uuid").reset_index()
    )


def remembered_answers(lookups: pd.DataFrame, membership_uuids: set[str]) -> pd.DataFrame:
    """MEMBERSHIP_COLUMNS from the memory for those of ``membership_uuids`` it holds: a due
    lookup whose refresh failed tonight is matched again on its last answer, like every
    remembered lookup (it stays due, so it is asked again next night)."""
    return as_memberships(lookups[lookups["membership_uuid"].isin(membership_uuids)])


FORGOTTEN = "forgotten"  # a fetch_status: the answer named a forgotten user, and was erased


def as_memberships(lookups: pd.DataFrame) -> pd.DataFrame:
    """MEMBERSHIP_COLUMNS from remembered lookups; one whose email was erased because it
    named a forgotten user has fetch_status ``forgotten``: never matched, never listed."""
    erased = (
        lookups["forgotten_at"].notna()
        if "forgotten_at" in lookups
        else pd.Series(False, index=lookups.index)
    )
    return pd.DataFrame(
        {
            "membership_uuid": lookups["membership_uuid"],
            "learner_uuid": lookups["learner_uuid"],
            "external_learner_id": lookups["external_learner_id"],
            "fetch_status": lookups["status"].where(~erased, FORGOTTEN),
            "error": None,
        },
        columns=MEMBERSHIP_COLUMNS,
    ).reset_index(drop=True)


def erase_forgotten(fetched: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """``fetched`` (MEMBERSHIP_COLUMNS) with a ``forgotten`` column: an answer whose external
    id names a forgotten user (and no other) keeps no email, before it is stored anywhere."""
    naming = set(lookups_naming_forgotten_users(fetched, users))
    forgotten = fetched["membership_uuid"].isin(naming)
    return fetched.assign(
        external_learner_id=fetched["external_learner_id"].where(~forgotten, None),
        forgotten=forgotten,
    )
