"""Organisation memberships: which to fetch, and which Teach Computing user each names."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..partners_api import NotFoundError, PartnersApiClient, PartnersApiError
from ..rules import match_user, normalise_email

MEMBERSHIP_COLUMNS = [
    "membership_uuid",
    "learner_uuid",
    "external_learner_id",
    "fetch_status",
    "error",
]


def memberships_to_fetch(enrolments: pd.DataFrame, linked: pd.DataFrame) -> list[str]:
    """Each membership on any report that no user is linked to, once however many runs it is on."""
    seen = pd.unique(enrolments["membership_uuid"].to_numpy())
    return sorted(set(seen) - set(linked["membership_uuid"]))


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
    found = memberships[memberships["fetch_status"] == "found"]
    user_ids = set(users["id"])
    by_email = dict(zip(users["email"].map(normalise_email), users["id"], strict=True))
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
