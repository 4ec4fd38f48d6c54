"""Step 1 — link FutureLearn organisation memberships to Teach Computing users."""

from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from ..partners_api.resource import PartnersApiResource
from ..privacy import mask_email
from ..steps import asset_values
from ..steps.course_reports import CourseEnrolments
from ..steps.membership_linking import link_memberships_skipping_locked
from ..steps.membership_matching import FORGOTTEN, match_memberships
from ..steps.night_plan import NightPlan
from ..teachcomputing.resource import TeachComputingDatabaseResource
from .failures import fails_in_one_line
from .metadata import request_tally, table, with_night_summary
from .night_asset import night_asset
from .run_options import RunOptions, plan_metadata


@night_asset(kinds={"python", "pandas"})
@fails_in_one_line
def organisation_memberships(
    context: dg.AssetExecutionContext,
    partners_api: PartnersApiResource,
    teachcomputing_db: TeachComputingDatabaseResource,
    run_options: RunOptions,
    course_enrolments: CourseEnrolments,
) -> dg.MaterializeResult[pd.DataFrame]:
    """Each organisation membership on tonight's reports that no Teach Computing user holds
    yet, once however many runs it appears on: asked of the API when it was never looked up
    or its lookup is due, else taken from the membership memory. Every answer (a 404
    included) is remembered, except in a dry run; one naming a forgotten user without its
    email."""
    client = partners_api.client_for(run_options)
    with request_tally(client) as requests:
        result = asset_values.organisation_memberships(
            client,
            teachcomputing_db.repository(),
            course_enrolments,
            dagster_run_id=context.run.run_id,
            now=datetime.now(UTC),
            refresh_days=partners_api.membership_refresh_days,
            record=not run_options.dry_run,
        )
    plan, failed = result.plan, result.fetched_count("failed")
    if failed:
        context.log.warning(
            f"{failed} membership(s) could not be fetched; they will be tried again next night"
        )
    return dg.MaterializeResult(
        value=result.memberships,
        metadata={
            "memberships_on_reports": plan.on_reports,
            "memberships_already_linked": plan.already_linked,
            "memberships_to_fetch": len(plan.to_fetch),
            "memberships_never_looked_up": plan.never_looked_up,
            "memberships_from_memory": len(plan.remembered),
            "memberships_fetched": result.fetched_count("found"),
            "memberships_not_found": result.fetched_count("not_found"),
            "memberships_failed": failed,
            "memberships_naming_forgotten_users": result.fetched_count(FORGOTTEN),
            "dry_run": run_options.dry_run,
            **requests,
        },
    )


@night_asset(
    kinds={"python", "sql"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_ambiguous_matches",
            asset="membership_links",
            description="No external_learner_id names more than one user (by id and email, or two emails that fold alike).",
        )
    ],
)
@fails_in_one_line
def membership_links(
    context: dg.AssetExecutionContext,
    teachcomputing_db: TeachComputingDatabaseResource,
    run_options: RunOptions,
    organisation_memberships: pd.DataFrame,
) -> dg.MaterializeResult:
    """Links each fetched or remembered membership to the Teach Computing user whose id or email is its
    external_learner_id (id first; then email, trimmed and case-folded; forgotten users never;
    a value naming two users links nobody). The UUID is appended to the user's
    future_learn_organisation_memberships with a link row, in one transaction; a membership
    in a user's array is never moved, and one in no array is linked again. What this
    project keeps that names a forgotten user goes. A dry run plans the links and writes
    nothing; a scoped run links only to its users."""
    repository = teachcomputing_db.repository()
    scope = run_options.scope(repository)
    matches = match_memberships(organisation_memberships, repository.users())
    links = matches.links
    if scope.users is not None:
        links = links[links["user_id"].isin(scope.users)].reset_index(drop=True)
    plan = NightPlan()
    # A dry run's plan is what the night would link: the same rule, nothing written.
    if run_options.dry_run:
        result, timed_out = repository.plan_links(links), pd.DataFrame()
    else:
        result, timed_out = link_memberships_skipping_locked(repository, links, context.run.run_id)
    if not timed_out.empty:
        context.log.warning(
            f"{len(timed_out)} membership link(s) skipped on a database lock or statement "
            "timeout (another session held their user's row); the next run links them"
        )
    plan.link(result.links)
    # Nightly on a full run; a scoped run changes only its own users' rows.
    forgot = (
        repository.forget_forgotten_users(dry_run=run_options.dry_run) if not scope.scoped else None
    )
    conflicts = pd.DataFrame(
        result.conflicts, columns=["membership_uuid", "linked_user_id", "matched_user_id"]
    )
    if not conflicts.empty:
        context.log.warning(
            f"{len(conflicts)} membership(s) already linked to another user were left as they are"
        )
    by = matches.links["matched_by"].value_counts()
    unmatched = matches.unmatched.assign(
        external_learner_id=matches.unmatched["external_learner_id"].map(mask_email)
    )
    ambiguous = matches.ambiguous.assign(
        external_learner_id=matches.ambiguous["external_learner_id"].map(mask_email)
    )
    not_found = int((organisation_memberships["fetch_status"] == "not_found").sum())
    materialized = dg.MaterializeResult(
        metadata={
            **plan_metadata(plan, run_options, scope),
            "memberships_linked": len(result.links),
            "linked_by_id": int(by.get("id", 0)),
            "linked_by_email": int(by.get("email", 0)),
            "memberships_already_linked": result.already_linked,
            # The unmatched, by reason: their progress never reaches Teach Computing.
            "unmatched_no_such_user": len(matches.unmatched),
            "unmatched_ambiguous": len(matches.ambiguous),
            "unmatched_membership_not_found": not_found,
            "memberships_linked_to_another_user": len(conflicts),
            "links_skipped_on_lock_timeout": table(timed_out, limit=10),
            "unmatched_preview": table(unmatched, limit=10),
            "conflicts": table(conflicts, limit=10),
            "forgotten_users_link_rows_removed": forgot.link_rows if forgot else 0,
            "forgotten_users_lookups_erased": forgot.lookups_erased if forgot else 0,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_ambiguous_matches",
                passed=matches.ambiguous.empty,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "ambiguous": len(matches.ambiguous),
                    "memberships": table(ambiguous, limit=10),
                },
            )
        ],
    )
    return with_night_summary(context, materialized)
