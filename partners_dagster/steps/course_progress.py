"""Step 2's second half, pure (no Dagster, no I/O): the plan of one course's achievement
updates, from the latest enrolments and what is stored for the course now."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from ..rules import State, next_achievement, transition_metadata
from ..sidekiq.follow_up_jobs import FollowUpJob, Programme, auto_enrol_job, completion_jobs


@dataclass(frozen=True)
class CourseFacts:
    """What the plan of one course needs to know besides the achievements."""

    activity_id: str
    credit: float | None  # as stored (the website's column is a nullable float)
    category: str | None
    programmes: Mapping[str, Programme]  # every programme, by id
    users_with_csa_enrolment: Collection[str]  # any state, for csa_auto_enrollable?
    globalid_app: str
    dagster_run_id: str
    now: datetime


@dataclass
class CoursePlan:
    updates: list[dict[str, Any]] = field(default_factory=list)  # id, progress, updated_at
    transitions: list[dict[str, Any]] = field(default_factory=list)  # statesman rows
    jobs: list[FollowUpJob] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def job_rows(self, dagster_run_id: str, now: datetime) -> list[dict[str, Any]]:
        """The outbox rows of the plan's follow-up jobs."""
        return [
            {
                "job_class": job.job_class,
                "queue": job.queue,
                "arguments": job.arguments,
                "run_at": job.run_at,
                "dedup_key": job.dedup_key,
                "achievement_id": job.achievement_id,
                "user_id": job.user_id,
                "created_at": now,
                "dagster_run_id": dagster_run_id,
            }
            for job in self.jobs
        ]


def plan_course_progress(
    latest: pd.DataFrame, stored: pd.DataFrame, facts: CourseFacts, created: Collection[str] = ()
) -> CoursePlan:
    """``latest``: one row per user (user_id, run_uuid, membership_uuid, deactivated_at,
    progress). ``stored``: the course's achievements (id, user_id, progress, programme_id,
    state, last_sort_key); every user in ``latest`` has one by now. ``created``: the ids
    of the achievements created in this transaction."""
    plan = CoursePlan()
    now = facts.now
    rows = latest.merge(stored, on="user_id", how="inner", suffixes=("_new", ""))
    complete = rows["state"] == State.COMPLETE  # never changed again, whoever completed it
    plan.counts["skipped_complete"] += int(complete.sum())
    rows = rows[~complete]
    if rows.empty:
        return plan
    rows = _with_outcomes(rows)
    # Most rows change nothing on a steady night: only the changed ones, and the ones created
    # in this transaction, are looked at one by one.
    changed = (rows["outcome_progress"] != rows["progress"]) | rows["outcome_moved"]
    plan.counts["unchanged"] += int((~changed).sum())
    interesting = changed | rows["id"].isin(set(created))
    for row, row_changed in zip(
        rows[interesting].itertuples(index=False), changed[interesting], strict=True
    ):
        deactivated_at = None if pd.isna(row.deactivated_at) else row.deactivated_at
        outcome = row.outcome
        programme = facts.programmes.get(row.programme_id) if row.programme_id else None
        job = auto_enrol_job(
            programme=programme,
            achievement_id=row.id,
            user_id=row.user_id,
            has_csa_enrolment=row.user_id in facts.users_with_csa_enrolment,
            now=now,
        )
        if job is not None:
            plan.jobs.append(job)
        if not row_changed:
            continue
        if outcome.progress > row.progress:
            plan.counts["progressed"] += 1
        plan.updates.append({"id": row.id, "progress": outcome.progress, "updated_at": now})
        if not outcome.moved:
            continue
        plan.counts[f"moved_to_{outcome.state}"] += 1
        plan.transitions.append(
            {
                "achievement_id": row.id,
                "to_state": str(outcome.state),
                "sort_key": int(row.last_sort_key) + 10,
                "most_recent": True,
                "metadata": transition_metadata(
                    outcome.state,
                    dagster_run_id=facts.dagster_run_id,
                    run_uuid=row.run_uuid,
                    membership_uuid=row.membership_uuid,
                    credit=facts.credit,
                    left_at=deactivated_at,
                ),
                "created_at": now,
                "updated_at": now,
            }
        )
        if outcome.state is State.COMPLETE:
            plan.jobs.extend(
                completion_jobs(
                    programme=programme,
                    category=facts.category,
                    user_id=row.user_id,
                    activity_id=facts.activity_id,
                    achievement_id=row.id,
                    now=now,
                    globalid_app=facts.globalid_app,
                )
            )
    return plan


@dataclass(frozen=True)
class SweepPlan:
    """What one read of every course's achievements says before any transaction."""

    # activity_id, user_id (sorted): the rows that need a write, because the achievement is
    # missing or the rule changes its progress or state. Only their courses open a
    # transaction, and only these rows are read again inside it.
    pending: pd.DataFrame
    # activity_id -> Counter(unchanged, skipped_complete) of the rows *not* pending.
    settled: dict[str, Counter]


def sweep_courses(latest: pd.DataFrame, stored: pd.DataFrame) -> SweepPlan:
    """The plan of every course at once, by the same rule as ``plan_course_progress``.
    ``latest``: the latest enrolments (activity_id, user_id, deactivated_at, progress; the
    forgotten users left out). ``stored``: activity_id and the achievements' columns, as
    ``achievements_of_courses`` reads them."""
    rows = latest[["activity_id", "user_id", "deactivated_at", "progress"]].merge(
        stored[["activity_id", "user_id", "progress", "state"]],
        on=["activity_id", "user_id"],
        how="left",
        suffixes=("_new", ""),
        indicator=True,
    )
    missing = rows["_merge"] == "left_only"
    present = rows[~missing]
    complete = present["state"] == State.COMPLETE
    open_rows = present[~complete]
    if open_rows.empty:
        changed = pd.Series(False, index=open_rows.index)
    else:
        open_rows = _with_outcomes(open_rows)
        changed = (open_rows["outcome_progress"] != open_rows["progress"]) | open_rows[
            "outcome_moved"
        ]
    pending = pd.concat(
        [
            rows.loc[missing, ["activity_id", "user_id"]],
            open_rows.loc[changed, ["activity_id", "user_id"]],
        ]
    ).sort_values(["activity_id", "user_id"], ignore_index=True)
    settled: dict[str, Counter] = {}
    for name, frame in (
        ("skipped_complete", present[complete]),
        ("unchanged", open_rows[~changed]),
    ):
        for activity_id, n in frame.groupby("activity_id").size().items():
            settled.setdefault(activity_id, Counter())[name] += int(n)
    return SweepPlan(pending=pending, settled=settled)


def _with_outcomes(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with each one's ``next_achievement`` outcome: the rule runs once for each
    distinct (progress, state, new progress, deactivated), not once a row. Plain lists, not
    a frame of keys: this runs once per course written, on a few rows, as well as once on
    every row of the night."""
    keys = list(
        zip(
            rows["progress"].astype("int64").tolist(),
            rows["state"].astype(str).tolist(),
            rows["progress_new"].astype("int64").tolist(),
            rows["deactivated_at"].notna().tolist(),
            strict=True,
        )
    )
    outcomes = {key: next_achievement(*key) for key in dict.fromkeys(keys)}
    found = [outcomes[key] for key in keys]
    return rows.assign(
        outcome=found,
        outcome_progress=[outcome.progress for outcome in found],
        outcome_moved=[outcome.moved for outcome in found],
    )


def plan_violations(stored: pd.DataFrame, plan: CoursePlan) -> Counter:
    """Checked against the stored rows, not the planner's own view: progress never goes down
    and a complete achievement never changes."""
    new_progress = {update["id"]: update["progress"] for update in plan.updates}
    updated = stored[stored["id"].isin(set(new_progress))]
    return Counter(
        progress_decreases=sum(
            new_progress[i] < progress
            for i, progress in zip(updated["id"], updated["progress"], strict=True)
        ),
        complete_changed=int((updated["state"] == "complete").sum()),
    )
