"""Why did a teacher's record change? Their links and achievement transitions, with run ids."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Engine, func, select

from ..privacy import mask_email
from ..rules import canonical_uuid, normalise_email
from ..teachcomputing.engine import read_only
from ..teachcomputing.models import (
    Achievement,
    AchievementTransition,
    Activity,
    FutureLearnOrganisationMembership,
    User,
)


class UnknownUserError(LookupError):
    pass


@dataclass(frozen=True)
class UserAudit:
    user_id: str
    email: str
    memberships: pd.DataFrame  # uuid, linked_at, dagster_run_id
    achievements: pd.DataFrame  # id, activity, progress, current_state, updated_at
    transitions: (
        pd.DataFrame
    )  # achievement_id, from_state, to_state, created_at, dagster_run_id, run, membership


def audit_user(engine: Engine, who: str) -> UserAudit:
    """``who`` is a user id or an email address (any letter case)."""
    with read_only(engine) as connection:
        as_id = canonical_uuid(who)
        condition = User.id == as_id if as_id else func.lower(User.email) == normalise_email(who)
        user = connection.execute(select(User.id, User.email).where(condition)).first()
        if user is None:
            raise UnknownUserError(f"no Teach Computing user with id or email {who!r}")
        memberships = pd.DataFrame(
            connection.execute(
                select(
                    FutureLearnOrganisationMembership.uuid,
                    FutureLearnOrganisationMembership.linked_at,
                    FutureLearnOrganisationMembership.dagster_run_id,
                )
                .where(FutureLearnOrganisationMembership.user_id == user.id)
                .order_by(FutureLearnOrganisationMembership.linked_at)
            ).all(),
            columns=["uuid", "linked_at", "dagster_run_id"],
        )
        achievements = pd.DataFrame(
            connection.execute(
                select(
                    Achievement.id,
                    Activity.title,
                    Achievement.progress,
                    Achievement.current_state,
                    Achievement.updated_at,
                )
                .join(Activity, Activity.id == Achievement.activity_id)
                .where(Achievement.user_id == user.id)
                .order_by(Activity.title)
            ).all(),
            columns=["id", "activity", "progress", "current_state", "updated_at"],
        )
        t = AchievementTransition
        rows = connection.execute(
            select(
                t.achievement_id,
                t.from_state,
                t.to_state,
                t.created_at,
                t.transition_metadata.label("meta"),
            )
            .join(Achievement, Achievement.id == t.achievement_id)
            .where(Achievement.user_id == user.id)
            .order_by(t.achievement_id, t.sort_key)
        ).all()
    transitions = pd.DataFrame(
        [
            (
                r.achievement_id,
                r.from_state,
                r.to_state,
                r.created_at,
                r.meta.get("dagster_run_id"),
                r.meta.get("future_learn_run_uuid"),
                r.meta.get("future_learn_membership_uuid"),
            )
            for r in rows
        ],
        columns=[
            "achievement_id",
            "from_state",
            "to_state",
            "created_at",
            "dagster_run_id",
            "run",
            "membership",
        ],
    )
    return UserAudit(user.id, user.email, memberships, achievements, transitions)


def format_audit(audit: UserAudit, *, show_emails: bool) -> str:
    email = audit.email if show_emails else mask_email(audit.email)
    lines = [
        f"user {audit.user_id} <{email}>",
        "",
        f"FutureLearn memberships ({len(audit.memberships)}):",
    ]
    for m in audit.memberships.itertuples():
        lines.append(
            f"  {m.uuid}  linked {m.linked_at:%Y-%m-%d %H:%M} UTC by run {m.dagster_run_id or '(before partners_dagster)'}"
        )
    lines += ["", f"achievements ({len(audit.achievements)}):"]
    for a in audit.achievements.itertuples():
        title = " ".join(str(a.activity).split())
        lines.append(
            f"  {title:<40.40} {a.current_state:<12} {a.progress:>3}%  updated {a.updated_at:%Y-%m-%d %H:%M}"
        )
        for t in audit.transitions[audit.transitions["achievement_id"] == a.id].itertuples():
            lines.append(
                f"      {t.created_at:%Y-%m-%d %H:%M}  {t.from_state or '-'} -> {t.to_state}  "
                f"run {t.dagster_run_id}  FutureLearn run {t.run} membership {t.membership}"
            )
    return "\n".join(lines)
