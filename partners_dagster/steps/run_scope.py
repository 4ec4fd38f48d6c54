"""A run's scope: the courses and users an operator named (docs/operator-controls.md, "Scope").

Only those courses' runs are read and only those users' rows change; the rules are the same
as on a full night. A name that matches nothing is an error that names it, before any write.
No Dagster, no I/O: the callers pass what the database holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from ..privacy import mask_email
from ..rules import canonical_uuid, match_user, user_ids_by_email


class ScopeError(ValueError):
    """A course or user named in the run's scope that is not there."""


@dataclass(frozen=True)
class RunScope:
    courses: frozenset[str] | None = None  # canonical course UUIDs; None: every known course
    users: frozenset[str] | None = None  # user ids; None: every user

    @property
    def scoped(self) -> bool:
        return self.courses is not None or self.users is not None

    def describe(self) -> str:
        parts = []
        if self.courses is not None:
            parts.append(f"{len(self.courses)} course(s)")
        if self.users is not None:
            parts.append(f"{len(self.users)} user(s)")
        return ", ".join(parts) if parts else "every course and user"


def resolve_courses(
    values: Sequence[str], known_course_uuids: Iterable[str]
) -> frozenset[str] | None:
    """The course UUIDs of ``values``, each one an activity knows; an empty list: no scope."""
    if not values:
        return None
    known = set(known_course_uuids)
    resolved = set()
    for position, value in enumerate(values):
        course = canonical_uuid(value) if isinstance(value, str) else None
        if course is None:
            raise ScopeError(f"courses[{position}]: {str(value)[:60]!r} is not a course UUID")
        if course not in known:
            raise ScopeError(
                f"courses[{position}]: no Teach Computing activity has the FutureLearn course "
                f"{course} (its future_learn_course_uuid)"
            )
        resolved.add(course)
    return frozenset(resolved)


def resolve_users(values: Sequence[str], users: pd.DataFrame) -> frozenset[str] | None:
    """The user ids of ``values``, each a user id or an email (matched as step 1 matches:
    id first, then the exact folded email); an empty list: no scope. A value that names no
    user, or more than one, is an error (an email is shown masked). Forgotten users may be
    named: the night leaves them alone, as it always does."""
    if not values:
        return None
    ids = set(users["id"])
    by_email = user_ids_by_email(users["id"], users["email"])
    resolved = set()
    for position, value in enumerate(values):
        match = match_user(value if isinstance(value, str) else None, ids, by_email)
        shown = mask_email(str(value))[:80] if isinstance(value, str) else repr(value)
        if match.matched_by == "ambiguous":
            raise ScopeError(
                f"users[{position}]: {shown!r} names {len(match.candidates)} users: "
                "name the one you mean by its id"
            )
        if match.user_id is None:
            raise ScopeError(f"users[{position}]: no user has the id or email {shown!r}")
        resolved.add(match.user_id)
    return frozenset(resolved)
