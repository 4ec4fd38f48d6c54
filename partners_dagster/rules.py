"""The business rules of docs/rules.md as plain functions: no Dagster, no database.

Each rule fixes a bug the earlier Ruby jobs had; the docstrings say which.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import pandas as pd

SOURCE = "partners_dagster"
PASS_MARK = 60  # progress at which a course counts as complete


class State(StrEnum):
    ENROLLED = "enrolled"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    DROPPED = "dropped"


ALLOWED_MOVES: Mapping[State, frozenset[State]] = {
    State.ENROLLED: frozenset({State.IN_PROGRESS, State.COMPLETE, State.DROPPED}),
    State.IN_PROGRESS: frozenset({State.COMPLETE, State.DROPPED}),
    State.DROPPED: frozenset({State.ENROLLED, State.IN_PROGRESS, State.COMPLETE}),
    State.COMPLETE: frozenset(),
}


# -- progress ------------------------------------------------------------------------------


class InvalidRatioError(ValueError):
    """A steps_completed_ratio that is not a number from 0 to 1."""


def check_ratio(value: Any) -> float:
    """The ratio as a float, or ``InvalidRatioError``; never clamped."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise InvalidRatioError(
            f"steps_completed_ratio must be a number from 0 to 1, got {value!r:.60}"
        )
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise InvalidRatioError(
            f"steps_completed_ratio must be a number from 0 to 1, got {value!r:.60}"
        )
    return number


def progress_from_ratio(ratio: Any) -> int:
    """floor(ratio × 100), computed in decimal: 0.29 → 29 and 0.58 → 58.

    The ratio arrives as JSON text such as ``0.29``; Python's float repr gives back the
    shortest text that round-trips, so decimal arithmetic on it is exact where binary
    floating point gives 28.999… → 28 (the old jobs' bug).
    """
    number = check_ratio(ratio)
    exact = ratio if isinstance(ratio, Decimal) else Decimal(repr(number))
    return int((exact * 100).to_integral_value(rounding="ROUND_FLOOR"))


def progress_from_ratios(ratios: pd.Series) -> pd.Series:
    """``progress_from_ratio`` over a column, computed once per distinct ratio."""
    distinct = pd.unique(ratios.to_numpy())
    table = {value: progress_from_ratio(float(value)) for value in distinct}
    return ratios.map(table).astype("int64")


# -- matching a membership to a user ---------------------------------------------------------


def normalise_email(email: str) -> str:
    """How emails compare: surrounding white space ignored, Python's case-folding (``ß`` and
    ``SS``, ``İ``, ``É`` fold the same everywhere, unlike SQL's ``lower()``), nothing else.

    ``_`` and ``%`` are ordinary characters: the old jobs' ``ILIKE`` let ``a_b@x.org``
    match ``axb@x.org``.
    """
    return email.strip().casefold()


def canonical_uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Match:
    user_id: str | None
    matched_by: str | None  # "id", "email", "ambiguous" or None
    candidates: tuple[str, ...] = ()


def match_user(
    external_learner_id: str | None,
    user_ids: Iterable[str] | set[str],
    user_ids_by_email: Mapping[str, Sequence[str]],
) -> Match:
    """The user an ``external_learner_id`` names: by id first, then by email.

    ``user_ids`` and ``user_ids_by_email`` hold only users who may be matched (not
    forgotten; the email map only users with an email), the map keyed by
    ``normalise_email``. An id or email that names more than one user (two users whose
    emails differ only by case or surrounding spaces, or one user's id and another's
    email) is ``ambiguous``: nobody is guessed.
    """
    if not external_learner_id or not external_learner_id.strip():
        return Match(None, None)
    as_uuid = canonical_uuid(external_learner_id)
    by_id = as_uuid if as_uuid is not None and as_uuid in user_ids else None
    by_email = tuple(user_ids_by_email.get(normalise_email(external_learner_id), ()))
    candidates = tuple(sorted({*([by_id] if by_id else []), *by_email}))
    if len(candidates) > 1:
        return Match(None, "ambiguous", candidates)
    if by_id:
        return Match(by_id, "id")
    if by_email:
        return Match(by_email[0], "email")
    return Match(None, None)


def user_ids_by_email(ids: Iterable[str], emails: Iterable[str | None]) -> dict[str, list[str]]:
    """The email map ``match_user`` takes: every folded email to the users who have it."""
    by_email: dict[str, list[str]] = {}
    for user_id, email in zip(ids, emails, strict=True):
        if isinstance(email, str) and email.strip():
            by_email.setdefault(normalise_email(email), []).append(user_id)
    return by_email


@dataclass(frozen=True)
class LinkPlan:
    links: pd.DataFrame  # to make: membership_uuid, user_id, matched_by
    already_linked: int  # in the matched user's array already
    # In another user's array: membership_uuid, linked_user_id, matched_user_id.
    conflicts: list[dict]


def plan_links(matches: pd.DataFrame, held: pd.DataFrame) -> LinkPlan:
    """The users' arrays are the truth. ``matches``: membership_uuid, user_id, matched_by;
    ``held``: membership_uuid, user_id of every array entry. A match whose membership no
    array holds is to be linked, whatever old link row names it (the website removed it,
    or deleted or forgot its user: it is matched again like any other). One in the matched
    user's array is already linked; one in another user's array is never moved: a conflict.
    """
    holder = dict(zip(held["membership_uuid"], held["user_id"], strict=True))
    in_array = matches["membership_uuid"].map(holder)
    new = matches[in_array.isna()].reset_index(drop=True)
    elsewhere = matches[in_array.notna() & (in_array != matches["user_id"])]
    return LinkPlan(
        links=new,
        already_linked=int((in_array == matches["user_id"]).sum()),
        conflicts=[
            {"membership_uuid": m, "linked_user_id": holder[m], "matched_user_id": u}
            for m, u in zip(elsewhere["membership_uuid"], elsewhere["user_id"], strict=True)
        ],
    )


def lookups_naming_forgotten_users(lookups: pd.DataFrame, users: pd.DataFrame) -> list[str]:
    """The remembered lookups (membership_uuid, external_learner_id) whose external id names
    a forgotten user, by id or email, and no user who is not forgotten: their email must go
    (a forgotten user leaves no trace of their identity). ``users``: id, email, forgotten."""
    forgotten = users[users["forgotten"].astype(bool)]
    if forgotten.empty:
        return []
    live = users[~users["forgotten"].astype(bool)]
    forgotten_emails = user_ids_by_email(forgotten["id"], forgotten["email"])
    live_emails = user_ids_by_email(live["id"], live["email"])
    forgotten_ids, live_ids = set(forgotten["id"]), set(live["id"])
    return [
        membership_uuid
        for membership_uuid, external in zip(
            lookups["membership_uuid"], lookups["external_learner_id"], strict=True
        )
        if isinstance(external, str)
        and match_user(external, forgotten_ids, forgotten_emails).matched_by
        and match_user(external, live_ids, live_emails).matched_by is None
    ]


def lookup_due_at(membership_uuid: str, fetched_at: datetime, refresh_days: float) -> datetime:
    """When a remembered lookup of an unlinked membership is asked for again: somewhere
    between N/2 and N days after it was made (N = ``refresh_days``), the point fixed by a
    hash of the membership's UUID and the lookup's time, so that about an equal share comes
    due each night and none sooner than N/2 days. N = 0: due at once (ask every night).

    The lookup's time is in the hash on purpose: with the UUID alone each membership would
    keep one period for ever, nights fall on whole days, and a cohort looked up on one night
    (the first night holds them all) would come due together again whenever those periods
    line up (night 60 of N = 7: five times the mean). A fresh point per lookup mixes them."""
    if refresh_days <= 0:
        return fetched_at
    key = f"{membership_uuid} {int(fetched_at.timestamp())}".encode()
    digest = int(hashlib.blake2b(key, digest_size=8).hexdigest(), 16)
    share = digest / 2**64  # uniform in [0, 1), fixed for this lookup
    return fetched_at + timedelta(days=refresh_days * (0.5 + 0.5 * share))


# -- reports read whole ----------------------------------------------------------------------


def report_shrank(remembered: int | None, enrolments: int) -> bool:
    """A run's report that shrinks counts as not read whole: empty when the last accepted
    one was not, or under half as many enrolments. Otherwise an API glitch that empties the
    newest run would make an older, abandoned enrolment the latest and drop the learner.
    ``remembered`` None: the run was never read, any size is accepted."""
    if remembered is None or remembered <= 0:
        return False
    return enrolments == 0 or enrolments * 2 < remembered


# -- the latest enrolment --------------------------------------------------------------------


@dataclass(frozen=True)
class Enrolment:
    run_uuid: str
    membership_uuid: str
    activated_at: datetime | None
    deactivated_at: datetime | None
    steps_completed_ratio: float


def _latest_key(enrolment: Enrolment) -> tuple:
    # A missing activated_at sorts oldest; then the higher ratio, then the greater run
    # UUID; the membership UUID only breaks a tie on one run across two memberships.
    activated = enrolment.activated_at
    return (
        activated is not None,
        activated.timestamp() if activated is not None else 0.0,
        enrolment.steps_completed_ratio,
        enrolment.run_uuid,
        enrolment.membership_uuid,
    )


def latest_enrolment(enrolments: Iterable[Enrolment]) -> Enrolment:
    """The enrolment that decides a (user, course): greatest ``activated_at``, ties to the
    higher ratio, then the greater run UUID."""
    return max(enrolments, key=_latest_key)


LATEST_SORT_COLUMNS = ["activated_at", "steps_completed_ratio", "run_uuid", "membership_uuid"]


def pick_latest_enrolment_rows(
    enrolments: pd.DataFrame, keys: Sequence[str] = ("user_id", "course_uuid")
) -> pd.DataFrame:
    """``latest_enrolment`` for every group of ``keys`` at once (one sort, no loop)."""
    ordered = enrolments.sort_values(
        [*keys, *LATEST_SORT_COLUMNS], na_position="first", kind="stable"
    )
    return ordered.drop_duplicates(list(keys), keep="last").reset_index(drop=True)


# -- the achievement state machine ----------------------------------------------------------


@dataclass(frozen=True)
class AchievementOutcome:
    progress: int
    state: State
    moved_from: State | None = None  # set when the state changed

    @property
    def moved(self) -> bool:
        return self.moved_from is not None


def target_state(new_progress: int, deactivated: bool) -> State:
    if deactivated and new_progress < PASS_MARK:
        return State.DROPPED
    if new_progress == 0:
        return State.ENROLLED
    if new_progress < PASS_MARK:
        return State.IN_PROGRESS
    return State.COMPLETE


def next_achievement(
    stored_progress: int, stored_state: str, new_progress: int, deactivated: bool
) -> AchievementOutcome:
    """Apply one latest enrolment to a stored achievement.

    A complete achievement never changes; progress never goes down; the state moves
    only along ``ALLOWED_MOVES``.
    """
    state = State(stored_state)
    if state is State.COMPLETE:
        return AchievementOutcome(stored_progress, state)
    if not 0 <= new_progress <= 100:
        raise ValueError(f"progress must be 0..100, got {new_progress}")
    progress = max(stored_progress, new_progress)
    target = target_state(new_progress, deactivated)
    if target is not state and target in ALLOWED_MOVES[state]:
        return AchievementOutcome(progress, target, moved_from=state)
    return AchievementOutcome(progress, state)


def transition_metadata(
    to_state: State,
    *,
    dagster_run_id: str,
    run_uuid: str,
    membership_uuid: str,
    credit: float | None,
    left_at: datetime | None,
) -> dict[str, Any]:
    """A transition's metadata: ``credit`` (the activity's, as stored: a float or null) on
    ``complete``, ``left_at`` on ``dropped``, and the audit trail of who moved it."""
    metadata: dict[str, Any] = {
        "source": SOURCE,
        "dagster_run_id": dagster_run_id,
        "future_learn_run_uuid": run_uuid,
        "future_learn_membership_uuid": membership_uuid,
    }
    if to_state is State.COMPLETE:
        metadata["credit"] = credit
    if to_state is State.DROPPED and left_at is not None:
        metadata["left_at"] = left_at.isoformat()
    return metadata


# -- a new achievement's programme ----------------------------------------------------------


UNENROLLED = "unenrolled"


@dataclass(frozen=True)
class ProgrammeEnrolment:
    programme_id: str
    created_at: datetime
    state: str = "enrolled"  # the to_state of its most recent transition; enrolled with none


def programme_for_new_achievement(
    activity_programme_ids: Iterable[str], user_enrolments: Iterable[ProgrammeEnrolment]
) -> str | None:
    """The activity's only programme; with several, the one the user most recently
    enrolled on and has not left; else none."""
    programmes = set(activity_programme_ids)
    if len(programmes) == 1:
        return next(iter(programmes))
    current = [e for e in user_enrolments if e.programme_id in programmes and e.state != UNENROLLED]
    if not current:
        return None
    return max(current, key=lambda e: (e.created_at, e.programme_id)).programme_id
