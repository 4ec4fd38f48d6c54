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


# The assets that change the website's tables or its job queue. The UI's "Materialize" and
# "Materialize all" launch them without a dialog; their descriptions, shown on the asset page
# beside that button, say so first (README, "Runs launched from the UI").
WRITES_WEBSITE = {
    "membership_links": "users.future_learn_organisation_memberships",
    "achievement_progress": "achievements and achievement_transitions",
    "follow_up_jobs": "the website's Sidekiq queue",
}


def with_write_warnings(assets: list) -> list:
    """``assets`` with a first line in the description of each that writes the website's
    data, and a ``writes`` tag the asset graph shows."""

    def warn(spec: dg.AssetSpec) -> dg.AssetSpec:
        target = WRITES_WEBSITE.get(spec.key.to_user_string())
        if target is None:
            return spec
        first = (
            f"**Writes the Teach Computing website's data ({target}).** Materializing it runs "
            "tonight's rules for real, as the nightly job does (idempotent: a second run "
            "changes nothing new), and waits for any other run of the night's assets."
        )
        return spec.replace_attributes(
            description=f"{first}\n\n{spec.description or ''}".strip()
        ).merge_attributes(tags={"partners_dagster/writes": "website"})

    return dg.map_asset_specs(warn, assets)
