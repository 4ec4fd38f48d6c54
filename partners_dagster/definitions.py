"""The Dagster definitions: ``partners_dagster.definitions:defs``.

Nothing is built and no environment variable is read at import: ``defs`` is built when
Dagster loads it (``dagster job execute -m partners_dagster.definitions``, ``workspace.yaml``,
``dg check defs``), so a malformed ``FL_PARTNERS_*`` setting cannot break ``partners-dagster
db upgrade`` or any other command that never runs a job.
"""

from __future__ import annotations

import atexit
import gc

import dagster as dg


def _env_or(name: str, default: str | None) -> str | dg.EnvVar | None:
    # EnvVar keeps a value that may hold a password (a database or redis URL) out of the
    # run config shown in the UI; the embedded default holds none.
    from . import settings

    return dg.EnvVar(name) if settings.is_set(name) else default


def build_resources() -> dict:
    """The resources, configured from the environment now (docs/contracts.md, "Environment")."""
    from . import settings
    from .partners_api.resource import PartnersApiResource
    from .sidekiq.resource import SidekiqResource
    from .teachcomputing.resource import TeachComputingDatabaseResource

    return {
        "partners_api": PartnersApiResource(
            base_url=dg.EnvVar("FL_PARTNERS_URL"),
            consumer_key=dg.EnvVar("FL_PARTNERS_CONSUMER_KEY"),
            consumer_secret=dg.EnvVar("FL_PARTNERS_CONSUMER_SECRET"),
            cache=_env_or("FL_PARTNERS_CACHE", settings.default_cache_location()),
            cache_expiry_seconds=settings.cache_expiry_seconds(),
            ignored_course_uuids=settings.ignored_course_uuids_text(),
            max_concurrency=settings.max_concurrency(),
            membership_refresh_days=settings.membership_refresh_days(),
            allow_insecure_http=settings.allow_insecure_http(),
        ),
        "teachcomputing_db": TeachComputingDatabaseResource(
            database_url=_env_or("TEACHCOMPUTING_DATABASE_URL", settings.default_database_url())
        ),
        "sidekiq": SidekiqResource(
            redis_url=_env_or("TEACHCOMPUTING_SIDEKIQ_REDIS_URL", None),
            globalid_app=settings.globalid_app(),
        ),
    }


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """The definitions; ``resources`` replaces the ones built from the environment (tests
    and tools pass their own)."""
    from .defs.alerts import alert_definitions
    from .defs.api_assets import course_enrolments, course_runs
    from .defs.follow_up_assets import follow_up_jobs
    from .defs.jobs import update_memberships_job, update_progress_job, with_write_warnings
    from .defs.membership_assets import membership_links, organisation_memberships
    from .defs.metadata import build_network_check
    from .defs.progress_assets import achievement_progress, latest_enrolments
    from .defs.schedules import update_memberships_schedule, update_progress_schedule

    alerts = alert_definitions()
    return dg.Definitions(
        assets=with_write_warnings(
            [
                course_runs,
                course_enrolments,
                organisation_memberships,
                membership_links,
                latest_enrolments,
                achievement_progress,
                follow_up_jobs,
            ]
        ),
        jobs=[update_memberships_job, update_progress_job],
        schedules=[update_memberships_schedule, update_progress_schedule],
        sensors=alerts["sensors"],
        asset_checks=[*alerts["asset_checks"], build_network_check()],
        resources=with_io_manager(resources if resources is not None else build_resources()),
        # Also the executor of the runs the UI makes from asset pages and "Materialize all"
        # (`__ASSET_JOB`), as of both jobs: the steps share one process, one API client with
        # its warm cache and counters, and one database pool (a process per step took 42 s
        # where the jobs take 2-3 s, and a step's counters would be its own only).
        executor=dg.in_process_executor,
    )


def with_io_manager(resources: dict) -> dict:
    """The resources plus the operator controls (``run_options``, defaults: a normal night)
    and the IO manager that keeps asset values off the disk (see defs/io_manager.py),
    unless the caller brought its own."""
    from .defs.io_manager import RebuildingIOManager
    from .defs.run_options import RunOptions

    resources = {"run_options": RunOptions(), **resources}
    if "io_manager" in resources:
        return resources
    return {
        **resources,
        "io_manager": RebuildingIOManager(
            partners_api=resources["partners_api"],
            teachcomputing_db=resources["teachcomputing_db"],
        ),
    }


@dg.definitions
def defs() -> dg.Definitions:
    """Built when Dagster loads the code location, not at import."""
    definitions = build_definitions()
    settle_long_lived_objects()
    return definitions


_settled = False


def settle_long_lived_objects() -> None:
    """Take what the imports and the definitions made out of the cyclic garbage collector's
    sight: they live as long as the process, so every later full collection skips them.
    At exit, the same for whatever the run made: the interpreter's last full collection
    over a run's heap took 1.3-2 s of every run process on the 2-core benchmark machine,
    after the run had ended. Dagster's teardown has closed the resources by then; cyclic
    garbage left at exit is not finalised, which the operating system makes moot."""
    global _settled
    gc.freeze()
    if not _settled:
        atexit.register(gc.freeze)
        _settled = True
