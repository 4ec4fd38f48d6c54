"""Why did a teacher's record change? Their links and achievement transitions, with run ids."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Engine

from ..privacy import mask_email
from ..rules import match_user, user_ids_by_email
from ..teachcomputing.repository import TeachComputingRepository


class UnknownUserError(LookupError):
    pass


@dataclass(frozen=True)
class UserAudit:
    user_id: str
    email: str | None
    memberships: pd.DataFrame  # uuid, linked_at, dagster_run_id, matched_by
    achievements: pd.DataFrame  # id, activity, progress, state, updated_at
    transitions: pd.DataFrame  # achievement_id, from_state, to_state, created_at, run ids


def find_user(engine: Engine, who: str) -> tuple[str, str | None]:
    """``who`` is a user id or an email address, found as the nightly matching finds an
    ``external_learner_id`` (``rules.match_user``: by id, then by email trimmed and case-folded
    in Python, so ``ÉLODIE@…``, ``İnci@…`` and ``" jo@…"`` are found), except that forgotten
    users are found too. An email two users share is refused rather than guessed."""
    users = TeachComputingRepository(engine).users()
    ids = users["id"].tolist()
    match = match_user(who, set(ids), user_ids_by_email(ids, users["email"].tolist()))
    if match.matched_by == "ambiguous":
        raise UnknownUserError(
            f"{len(match.candidates)} users share the email {mask_email(who)!r}: audit one by "
            "id (" + ", ".join(match.candidates) + ")"
        )
    if match.user_id is None:
        raise UnknownUserError(f"no Teach Computing user with id or email {mask_email(who)!r}")
    email = users.loc[users["id"] == match.user_id, "email"].iat[0]
    return match.user_id, email if isinstance(email, str) else None


def audit_user(engine: Engine, who: str) -> UserAudit:
    user_id, email = find_user(engine, who)
    memberships, achievements, rows = TeachComputingRepository(engine).user_history(user_id)
    transitions = pd.DataFrame(
        [
            (
                r.achievement_id,
                r.to_state,
                bool(r.most_recent),
                r.created_at,
                (r.meta or {}).get("dagster_run_id"),
                (r.meta or {}).get("future_learn_run_uuid"),
                (r.meta or {}).get("future_learn_membership_uuid"),
            )
            for r in rows.itertuples(index=False)
        ],
        columns=[
            "achievement_id",
            "to_state",
            "most_recent",
            "created_at",
            "dagster_run_id",
            "run",
            "membership",
        ],
    )
    transitions["from_state"] = (
        transitions.groupby("achievement_id")["to_state"].shift(1).fillna("enrolled")
    )
    current = transitions.loc[transitions["most_recent"].astype(bool)].set_index("achievement_id")[
        "to_state"
    ]
    achievements["state"] = achievements["id"].map(current).fillna("enrolled")
    return UserAudit(user_id, email, memberships, achievements, transitions)


def format_audit(audit: UserAudit, *, show_emails: bool) -> str:
    email = audit.email if show_emails else mask_email(audit.email)
    lines = [
        f"user {audit.user_id} <{email or 'no email'}>",
        "",
        f"FutureLearn memberships ({len(audit.memberships)}):",
    ]
    for m in audit.memberships.itertuples():
        if pd.isna(m.linked_at):
            lines.append(f"  {m.uuid}  linked before partners_dagster (no link record)")
        else:
            lines.append(
                f"  {m.uuid}  linked {m.linked_at:%Y-%m-%d %H:%M} UTC by {m.matched_by} "
                f"in run {m.dagster_run_id}"
            )
    lines += ["", f"achievements ({len(audit.achievements)}):"]
    for a in audit.achievements.itertuples():
        title = " ".join(str(a.activity).split())
        lines.append(
            f"  {title:<40.40} {a.state:<12} {a.progress:>3}%  updated {a.updated_at:%Y-%m-%d %H:%M}"
        )
        for t in audit.transitions[audit.transitions["achievement_id"] == a.id].itertuples():
            lines.append(
                f"      {t.created_at:%Y-%m-%d %H:%M}  {t.from_state} -> {t.to_state}  "
                f"run {t.dagster_run_id or '(not partners_dagster)'}  "
                f"FutureLearn run {t.run} membership {t.membership}"
            )
    return "\n".join(lines)
