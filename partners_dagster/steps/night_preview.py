"""Both steps' plans in one go, writing nothing: ``partners-dagster preview``.

The same functions as the nightly jobs, in the same order: step 1's links are planned, and
step 2 plans on top of them (the links the real step 1 would make first). The API is read
through the response cache (which it may fill); no table is written and nothing reaches
Sidekiq. No Dagster.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from .course_reports import fetch_course_enrolments, read_course_runs, runs_listed, scoped_runs
from .latest_enrolment import select_latest_enrolments
from .membership_lookup import look_up_memberships
from .membership_matching import match_memberships
from .night_plan import NightPlan
from .progress_update import update_achievement_progress
from .run_scope import RunScope, resolve_courses, resolve_users

if TYPE_CHECKING:
    from ..partners_api.client import PartnersApiClient
    from ..teachcomputing.repository import TeachComputingRepository

PREVIEW_RUN_ID = "preview"  # stands for the Dagster run id in what a preview computes


@dataclass
class NightPreview:
    plan: NightPlan
    scope: RunScope
    problems: list[str] = field(default_factory=list)  # what leaves courses or the night alone


def preview_night(
    client: PartnersApiClient,
    repository: TeachComputingRepository,
    *,
    ignored_courses: Collection[str],
    refresh_days: float,
    globalid_app: str,
    now: datetime,
    courses: Sequence[str] = (),
    users: Sequence[str] = (),
    accept_report_sizes: Collection[str] = (),
    say: Callable[[str], None] = lambda _: None,
) -> NightPreview:
    """Plan step 1 then step 2, as the nights would run them now; ``say`` hears progress.
    A scope name that matches nothing raises ``ScopeError`` before anything is read."""
    catalogue = repository.catalogue()
    scope = RunScope(
        courses=resolve_courses(courses, catalogue.activities["course_uuid"]),
        users=resolve_users(users, repository.users()) if users else None,
    )
    plan = NightPlan()
    preview = NightPreview(plan, scope)
    say(f"step 1: reading course runs (scope: {scope.describe()})")
    runs = read_course_runs(client, catalogue.activities["course_uuid"], ignored_courses).frame
    if scope.courses is not None:
        runs = scoped_runs(runs, scope.courses)
    listed = runs_listed(runs)
    if not listed.ok:
        preview.problems.append(f"{listed.problem}: the night changes nothing")
        return preview
    say(f"step 1: reading the reports of {int(runs['known'].sum())} run(s) of known courses")
    enrolments = fetch_course_enrolments(
        client, runs, repository.report_sizes(), accept_report_sizes
    )
    preview.problems += [
        f"course {course} left alone: run {run}: {error}"
        for run, course, error in enrolments.failed_runs.itertuples(index=False)
    ]
    lookups = look_up_memberships(
        client,
        repository,
        enrolments,
        dagster_run_id=PREVIEW_RUN_ID,
        now=now,
        refresh_days=refresh_days,
        record=False,
    )
    say(
        f"step 1: {len(lookups.plan.to_fetch)} membership(s) asked of the API, "
        f"{len(lookups.plan.remembered)} from the membership memory"
    )
    links = match_memberships(lookups.memberships, repository.users()).links
    if scope.users is not None:
        links = links[links["user_id"].isin(scope.users)]
    planned = repository.plan_links(links)
    plan.link(planned.links)
    say(f"step 1: {len(planned.links)} link(s) planned")
    linked = pd.concat(
        [repository.linked_memberships(), planned.links[["membership_uuid", "user_id"]]],
        ignore_index=True,
    )
    latest = select_latest_enrolments(enrolments, linked, catalogue.activities, users=scope.users)
    update_achievement_progress(
        repository,
        latest,
        dagster_run_id=PREVIEW_RUN_ID,
        globalid_app=globalid_app,
        now=now,
        dry_run=True,
        plan=plan,
        on_course=lambda done, total: say(f"step 2: courses planned {done}/{total}"),
    )
    return preview
