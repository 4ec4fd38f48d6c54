"""The two nightly jobs. Step 2 re-reads the API assets through the response cache."""

from __future__ import annotations

import dagster as dg

from .constants import (
    API_CONCURRENCY_TAG,
    API_CONCURRENCY_TAG_VALUE,
    FRESHNESS_CHECK,
    MEMBERSHIPS_JOB,
    PROGRESS_JOB,
)
from .run_options import DEFAULT_RUN_CONFIG

# A night that runs past this is canceled by run monitoring (dagster.yaml): a request that
# never ends must not hold the queue's one API slot for the following nights. A large first
# night takes about 10 minutes here.
MAX_RUNTIME_SECONDS = 3 * 60 * 60
API_TAGS = {
    API_CONCURRENCY_TAG: API_CONCURRENCY_TAG_VALUE,
    "dagster/max_runtime": str(MAX_RUNTIME_SECONDS),
}

# The steps of each job form a chain and share the API client's cache and the database
# pool, so they run in one process: no per-step process start-up, one warm cache.
update_memberships_job = dg.define_asset_job(
    name=MEMBERSHIPS_JOB,
    description="Step 1: link FutureLearn organisation memberships to Teach Computing users.",
    selection=dg.AssetSelection.assets(
        "course_runs", "course_enrolments", "organisation_memberships", "membership_links"
    ),
    tags=API_TAGS,
    executor_def=dg.in_process_executor,
    config=DEFAULT_RUN_CONFIG,
)

update_progress_job = dg.define_asset_job(
    name=PROGRESS_JOB,
    description="Step 2: update each linked teacher's course progress and achievements, then hand the follow-up jobs to the website's Sidekiq.",
    # The freshness check on achievement_progress is the daemon's (alerts.py), not a step.
    selection=dg.AssetSelection.assets(
        "course_runs",
        "course_enrolments",
        "latest_enrolments",
        "achievement_progress",
        "follow_up_jobs",
    )
    - dg.AssetSelection.checks(
        dg.AssetCheckKey(dg.AssetKey("achievement_progress"), FRESHNESS_CHECK),
        # Step 1 reports unknown courses; step 2 does not again (no warning, no check).
        dg.AssetCheckKey(dg.AssetKey("course_runs"), "no_unknown_courses"),
    ),
    tags=API_TAGS,
    executor_def=dg.in_process_executor,
    config=DEFAULT_RUN_CONFIG,
)
