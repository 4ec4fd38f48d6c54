"""Operator controls: what one run does, set in the Launchpad's config editor
(docs/operator-controls.md). The defaults are a normal night; the schedules use them."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from ..steps.night_plan import NightPlan
from ..steps.run_scope import RunScope, ScopeError, resolve_courses, resolve_users
from .metadata import table

DRY_RUN_TAG = "partners_dagster/dry_run"


class RunOptions(dg.ConfigurableResource):
    """Dry run, scope and refetch for one run (resource ``run_options``)."""

    dry_run: bool = Field(
        default=False,
        description="Plan the night and write nothing: no table, no outbox, nothing to Sidekiq. "
        "The plan's counts and a preview are in the run's metadata.",
    )
    courses: list[str] = Field(
        default=[],
        description="FutureLearn course UUIDs: read only these courses' runs (empty: every known course).",
    )
    users: list[str] = Field(
        default=[],
        description="Teach Computing user ids or emails: change only these users' rows (empty: everyone).",
    )
    refetch: bool = Field(
        default=False,
        description="Ask the API again instead of using the response cache's answers (and store the new ones).",
    )
    accept_report_sizes: list[str] = Field(
        default=[],
        description="Course run UUIDs whose report shrank and whose new size is right: read them as whole tonight.",
    )

    def scope(self, repository) -> RunScope:
        """The scope resolved against the database; a name that matches nothing stops the
        run here, before any write, naming it."""
        if not self.courses and not self.users:
            return RunScope()  # a full night: nothing to read to know that
        try:
            courses = (
                resolve_courses(self.courses, repository.catalogue().activities["course_uuid"])
                if self.courses
                else None
            )
            users = resolve_users(self.users, repository.users()) if self.users else None
        except ScopeError as error:
            raise dg.Failure(
                description=f"run_options: {error}. Nothing was written.",
                allow_retries=False,
            ) from None
        return RunScope(courses=courses, users=users)


# The run config a job's Launchpad opens with: every control at its default, so an operator
# sees what can be set (DESIGN's "Operator controls").
DEFAULT_RUN_CONFIG = {
    "resources": {
        "run_options": {
            "config": {
                "dry_run": False,
                "courses": [],
                "users": [],
                "refetch": False,
                "accept_report_sizes": [],
            }
        }
    }
}


def plan_metadata(plan: NightPlan, options: RunOptions, scope: RunScope) -> dict:
    """The plan's counts by change kind, a preview, and whether the run wrote it or only
    planned it."""
    counts = plan.counts()
    mode = "DRY RUN: nothing was written" if options.dry_run else "written"
    return {
        "dry_run": options.dry_run,
        "plan": dg.MetadataValue.md(f"**{mode}** — scope: {scope.describe()}\n\n{plan.summary()}"),
        **{f"plan_{kind}": n for kind, n in counts.items()},
        "plan_preview": table(plan.preview(), limit=50),
    }
