"""Step 2's second half, pure (no Dagster, no I/O): the plan of one course's achievement
updates, from the latest enrolments and the stored achievements."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from ..rules import FollowUpJob, State, follow_up_jobs, next_achievement, transition_metadata


@dataclass
class CoursePlan:
    updates: list[dict[str, Any]] = field(
        default_factory=list
    )  # id, progress, current_state, updated_at
    transitions: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[FollowUpJob] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def plan_course_progress(
    latest: pd.DataFrame,
    achievements: pd.DataFrame,
    last_sort_keys: Mapping[str, int],
    *,
    credit: int,
    programme_slugs: Mapping[str, str],
    dagster_run_id: str,
    now: datetime,
) -> CoursePlan:
    """``latest``: one row per user (user_id, run_uuid, membership_uuid, deactivated_at,
    progress). ``achievements``: the stored rows of this course for those users (id,
    user_id, progress, current_state, programme_id); every user has one by now."""
    plan = CoursePlan()
    rows = latest.merge(achievements, on="user_id", how="inner", suffixes=("_new", ""))
    for row in rows.itertuples(index=False):
        if row.current_state == State.COMPLETE:  # never changed again
            plan.counts["skipped_complete"] += 1
            continue
        deactivated_at = None if pd.isna(row.deactivated_at) else row.deactivated_at
        outcome = next_achievement(
            row.progress, row.current_state, row.progress_new, deactivated_at is not None
        )
        if outcome.progress == row.progress and not outcome.moved:
            plan.counts["unchanged"] += 1
            continue
        if outcome.progress > row.progress:
            plan.counts["progressed"] += 1
        plan.updates.append(
            {
                "id": row.id,
                "progress": outcome.progress,
                "current_state": str(outcome.state),
                "updated_at": now,
            }
        )
        if not outcome.moved:
            continue
        plan.counts[f"moved_to_{outcome.state}"] += 1
        plan.transitions.append(
            {
                "achievement_id": row.id,
                "from_state": str(outcome.moved_from),
                "to_state": str(outcome.state),
                "sort_key": last_sort_keys.get(row.id, 0) + 10,
                "most_recent": True,
                "metadata": transition_metadata(
                    outcome.state,
                    dagster_run_id=dagster_run_id,
                    run_uuid=row.run_uuid,
                    membership_uuid=row.membership_uuid,
                    credit=credit,
                    left_at=deactivated_at,
                ),
                "created_at": now,
            }
        )
        if outcome.state is State.COMPLETE:
            slug = (
                programme_slugs.get(row.programme_id) if isinstance(row.programme_id, str) else None
            )
            plan.jobs.extend(follow_up_jobs(slug, row.user_id, row.id, now))
    return plan
