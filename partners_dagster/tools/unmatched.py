"""Support staff's list of the unmatched: the teachers whose FutureLearn membership names no
Teach Computing account, so that their progress never reaches the website.

Read from the membership memory (``partners_dagster_membership_lookups``) and matched again,
here and now, by step 1's own rules (``match_memberships`` against the users as they are), so
that "no such user" and "ambiguous" agree with ``membership_links``'s nightly metadata. A
remembered membership that matches a user now is not listed: tonight's run links it.
"""

from __future__ import annotations

import csv

import pandas as pd

from ..privacy import mask_email
from ..steps.membership_matching import as_memberships, match_memberships
from ..teachcomputing.repository import TeachComputingRepository

# A cell starting with one of these is read as a formula by spreadsheet programs (OWASP's
# "CSV injection"): an external id is whatever the learner typed, e.g. =HYPERLINK(...).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

NO_SUCH_USER = "no such user"
AMBIGUOUS = "ambiguous"
NOT_FOUND = "membership not found"
REASONS = (NO_SUCH_USER, AMBIGUOUS, NOT_FOUND)

UNMATCHED_COLUMNS = [
    "membership_uuid",
    "reason",
    "external_learner_id",
    "first_seen",
    "last_looked_up",
    "enrolments",
    "courses",
]


def list_unmatched(
    lookups: pd.DataFrame,
    linked: pd.DataFrame,
    users: pd.DataFrame,
    *,
    show_emails: bool = False,
) -> pd.DataFrame:
    """One row per remembered membership that no user holds and none can be matched to:
    ``UNMATCHED_COLUMNS``, the external id masked unless ``show_emails``. Most enrolments
    first within each reason (``REASONS`` order).

    ``lookups``: ``TeachComputingRepository.membership_lookups()``; ``linked``:
    ``linked_memberships()``; ``users``: ``users()``."""
    open_ = lookups[~lookups["membership_uuid"].isin(set(linked["membership_uuid"]))]
    # As step 1 reads the memory: a lookup erased because it named a forgotten user
    # names nobody now, and is neither matched nor listed.
    matches = match_memberships(as_memberships(open_), users)
    reasons = pd.concat(
        [
            pd.DataFrame({"membership_uuid": matches.unmatched["membership_uuid"]}).assign(
                reason=NO_SUCH_USER
            ),
            pd.DataFrame({"membership_uuid": matches.ambiguous["membership_uuid"]}).assign(
                reason=AMBIGUOUS
            ),
            pd.DataFrame(
                {"membership_uuid": open_.loc[open_["status"] == "not_found", "membership_uuid"]}
            ).assign(reason=NOT_FOUND),
        ],
        ignore_index=True,
    )
    frame = reasons.merge(open_, on="membership_uuid", how="left")
    external = frame["external_learner_id"].astype(object)
    frame = pd.DataFrame(
        {
            "membership_uuid": frame["membership_uuid"],
            "reason": frame["reason"],
            "external_learner_id": external if show_emails else external.map(_masked),
            "first_seen": frame["first_fetched_at"],
            "last_looked_up": frame["fetched_at"],
            "enrolments": frame["enrolments"].astype("Int64"),
            "courses": frame["courses"].astype("Int64"),
        },
        columns=UNMATCHED_COLUMNS,
    )
    order = frame["reason"].map({r: i for i, r in enumerate(REASONS)})
    return (
        frame.assign(_order=order)
        .sort_values(
            ["_order", "enrolments", "membership_uuid"],
            ascending=[True, False, True],
            na_position="last",
        )
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def unmatched_memberships(
    repository: TeachComputingRepository, *, show_emails: bool = False
) -> pd.DataFrame:
    """``list_unmatched`` on what the database holds now."""
    return list_unmatched(
        repository.membership_lookups(),
        repository.linked_memberships(),
        repository.users(),
        show_emails=show_emails,
    )


def unmatched_summary(frame: pd.DataFrame) -> str:
    """``12 unmatched: 7 no such user, 1 ambiguous, 4 membership not found``."""
    by = frame["reason"].value_counts()
    parts = ", ".join(f"{int(by.get(r, 0))} {r}" for r in REASONS)
    return f"{len(frame)} unmatched: {parts}"


def neutralise_formula(value):
    """``value`` with a single quote in front when it is text a spreadsheet would run as a
    formula (starts with ``= + - @``, a tab or a carriage return); anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_unmatched_csv(frame: pd.DataFrame, path: str) -> None:
    """``frame`` as CSV for support staff, who open it in a spreadsheet: every text cell that
    would run as a formula is neutralised (``neutralise_formula``), and every cell is quoted,
    so that a carriage return inside one never splits its row."""
    frame.astype(object).map(neutralise_formula).to_csv(path, index=False, quoting=csv.QUOTE_ALL)


def _masked(value):
    return mask_email(value) if isinstance(value, str) else None
