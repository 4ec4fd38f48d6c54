"""Why did a teacher's record change? Their links and achievement transitions, with run ids."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Engine, select

from ..privacy import mask_email
from ..rules import canonical_uuid, normalise_email
from ..teachcomputing.engine import read_only
from ..teachcomputing.models import (
    Achievement,
    AchievementTransition,
    Activity,
    MembershipLink,
    User,
)


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
    """``who`` is a user id or an email address, compared as matching compares them
    (trimmed and case-folded in Python, so ``ÉLODIE@…``, ``İnci@…`` and ``" jo@…"`` are
    found). An email two users share is refused rather than guessed."""
    with read_only(engine) as connection:
        as_id = canonical_uuid(who)
        if as_id:
            user = connection.execute(select(User.id, User.email).where(User.id == as_id)).first()
            if user is not None:
                return user.id, user.email
        wanted = normalise_email(who)
        found = [
            (user_id, email)
            for user_id, email in connection.execute(
                select(User.id, User.email).where(User.email.is_not(None))
            )
            if normalise_email(email) == wanted
        ]
    if not found:
        raise UnknownUserError(f"no Teach Computing user with id or email {mask_email(who)!r}")
    if len(found) > 1:
        raise UnknownUserError(
            f"{len(found)} users share the email {mask_email(who)!r}: audit one by id ("
            + ", ".join(user_id for user_id, _ in found)
            + ")"
        )
    return found[0]


def audit_user(engine: Engine, who: str) -> UserAudit:
    user_id, email = find_user(engine, who)
    with read_only(engine) as connection:
        arrays = connection.execute(
            select(User.future_learn_organisation_memberships).where(User.id == user_id)
        ).scalar_one()
        links = pd.DataFrame(
            connection.execute(
                select(
                    MembershipLink.membership_uuid,
                    MembershipLink.linked_at,
                    MembershipLink.dagster_run_id,
                    MembershipLink.matched_by,
                ).where(MembershipLink.user_id == user_id)
            ).all(),
            columns=["uuid", "linked_at", "dagster_run_id", "matched_by"],
        )
        achievements = pd.DataFrame(
            connection.execute(
                select(
                    Achievement.id,
                    Activity.title,
                    Achievement.progress,
                    Achievement.updated_at,
                )
                .join(Activity, Activity.id == Achievement.activity_id)
                .where(Achievement.user_id == user_id)
                .order_by(Activity.title)
            ).all(),
            columns=["id", "activity", "progress", "updated_at"],
        )
        t = AchievementTransition
        rows = connection.execute(
            select(
                t.achievement_id,
                t.to_state,
                t.most_recent,
                t.created_at,
                t.transition_metadata.label("meta"),
            )
            .join(Achievement, Achievement.id == t.achievement_id)
            .where(Achievement.user_id == user_id)
            .order_by(t.achievement_id, t.sort_key)
        ).all()
    # Every membership in the user's array, with how and when we linked it (the website, or
    # the old jobs, may have linked some before partners_dagster).
    memberships = pd.DataFrame(
        {"uuid": pd.Series([m.lower() for m in arrays], dtype=object)}
    ).merge(links.astype({"uuid": object}), on="uuid", how="left")
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
            for r in rows
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
