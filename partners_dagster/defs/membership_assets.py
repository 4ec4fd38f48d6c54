"""Step 1 — link FutureLearn organisation memberships to Teach Computing users."""

import dagster as dg
import pandas as pd

from ..partners_api.resource import PartnersApiResource
from ..privacy import mask_email
from ..steps.course_reports import CourseEnrolments
from ..steps.membership_matching import fetch_memberships, match_memberships, memberships_to_fetch
from ..teachcomputing.resource import TeachComputingDatabaseResource
from .constants import GROUP
from .metadata import request_tally, table


@dg.asset(group_name=GROUP, kinds={"python", "pandas"})
def organisation_memberships(
    context: dg.AssetExecutionContext,
    partners_api: PartnersApiResource,
    teachcomputing_db: TeachComputingDatabaseResource,
    course_enrolments: CourseEnrolments,
) -> dg.Output[pd.DataFrame]:
    """Each organisation membership on tonight's reports that no Teach Computing user is linked
    to yet, fetched once however many runs it appears on."""
    linked = teachcomputing_db.repository().linked_memberships()
    wanted = memberships_to_fetch(course_enrolments.enrolments, linked)
    on_reports = int(course_enrolments.enrolments["membership_uuid"].nunique())
    client = partners_api.client
    with request_tally(client) as requests:
        memberships = fetch_memberships(client, wanted)
    status = memberships["fetch_status"].value_counts()
    if status.get("failed", 0):
        context.log.warning(
            f"{status['failed']} membership(s) could not be fetched; they will be tried again next night"
        )
    return dg.Output(
        memberships,
        metadata={
            "memberships_on_reports": on_reports,
            "memberships_already_linked": on_reports - len(wanted),
            "memberships_to_fetch": len(wanted),
            "memberships_fetched": int(status.get("found", 0)),
            "memberships_not_found": int(status.get("not_found", 0)),
            "memberships_failed": int(status.get("failed", 0)),
            **requests,
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "sql"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_ambiguous_matches",
            asset="membership_links",
            description="No external_learner_id is one user's id and another user's email.",
        )
    ],
)
def membership_links(
    context: dg.AssetExecutionContext,
    teachcomputing_db: TeachComputingDatabaseResource,
    organisation_memberships: pd.DataFrame,
):
    """Links each fetched membership to the Teach Computing user whose id or email is its
    external_learner_id (id first; email exact, case-insensitive). Written in one transaction;
    a membership already linked is never moved."""
    repository = teachcomputing_db.repository()
    matches = match_memberships(organisation_memberships, repository.users())
    result = repository.link_memberships(matches.links, context.run.run_id)
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
    yield dg.MaterializeResult(
        metadata={
            "memberships_linked": result.created,
            "linked_by_id": int(by.get("id", 0)),
            "linked_by_email": int(by.get("email", 0)),
            "memberships_already_linked": result.already_linked,
            "memberships_unmatched": len(matches.unmatched),
            "memberships_not_found": int(
                (organisation_memberships["fetch_status"] == "not_found").sum()
            ),
            "memberships_ambiguous": len(matches.ambiguous),
            "memberships_linked_to_another_user": len(conflicts),
            "unmatched_preview": table(unmatched, limit=10),
            "conflicts": table(conflicts, limit=10),
        }
    )
    yield dg.AssetCheckResult(
        check_name="no_ambiguous_matches",
        passed=matches.ambiguous.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"ambiguous": len(matches.ambiguous), "memberships": table(ambiguous, limit=10)},
    )
