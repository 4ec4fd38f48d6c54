"""Step 1 — link FutureLearn organisation memberships to Teach Computing users."""

import dagster as dg
import pandas as pd

from ..courses import CourseEnrolments, course_runs_frame, fetch_course_enrolments, unknown_courses
from ..memberships import fetch_memberships, match_memberships, memberships_to_fetch
from ..partners_api.resource import PartnersApiResource
from ..teachcomputing.resource import TeachComputingDatabaseResource
from .constants import GROUP
from .metadata import mask_email, request_tally, table


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pandas"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_unknown_courses",
            asset="course_runs",
            description="Every course on FutureLearn is known to Teach Computing or explicitly ignored.",
        ),
        dg.AssetCheckSpec(
            "no_malformed_runs",
            asset="course_runs",
            description="Every course run record has the documented shape.",
        ),
    ],
)
def course_runs(
    context: dg.AssetExecutionContext,
    partners_api: PartnersApiResource,
    teachcomputing_db: TeachComputingDatabaseResource,
):
    """Every FutureLearn course run the partner can see, with whether Teach Computing knows its
    course (an activity holds its UUID) or has asked to ignore it."""
    client = partners_api.client
    with request_tally(client) as requests:
        runs, rejections = client.course_runs()
    catalogue = teachcomputing_db.repository().catalogue()
    frame = course_runs_frame(
        runs, catalogue.activities["course_uuid"], partners_api.ignored_courses, rejections
    )
    unknown = unknown_courses(frame)
    courses = frame[frame["malformed"].isna()].drop_duplicates("course_uuid")
    if not unknown.empty:
        context.log.warning(
            f"{len(unknown)} FutureLearn course(s) unknown to Teach Computing: {', '.join(unknown['title'])}"
        )
    yield dg.Output(
        frame,
        metadata={
            "runs": len(runs),
            "courses": len(courses),
            "courses_known": int(courses["known"].sum()),
            "courses_unknown": len(unknown),
            "courses_ignored": int(courses["ignored"].sum()),
            "runs_rejected": len(rejections),
            "unknown_courses": table(unknown),
            **requests,
        },
    )
    yield dg.AssetCheckResult(
        check_name="no_unknown_courses",
        passed=unknown.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=None
        if unknown.empty
        else "Add an activity for each course, or list it in FL_PARTNERS_IGNORED_COURSE_UUIDS.",
        metadata={"unknown_courses": len(unknown), "courses": table(unknown)},
    )
    yield dg.AssetCheckResult(
        check_name="no_malformed_runs",
        passed=not rejections,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "rejected": len(rejections),
            "first_reasons": table(
                pd.DataFrame(
                    [(r.index, r.key, r.reason) for r in rejections],
                    columns=["index", "key", "reason"],
                ),
                limit=5,
            ),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pandas"},
    check_specs=[
        dg.AssetCheckSpec(
            "all_runs_fetched",
            asset="course_enrolments",
            description="Every known course's runs were read.",
        ),
        dg.AssetCheckSpec(
            "no_malformed_enrolments",
            asset="course_enrolments",
            description="Every enrolment record has the documented shape.",
        ),
    ],
)
def course_enrolments(
    context: dg.AssetExecutionContext, partners_api: PartnersApiResource, course_runs: pd.DataFrame
):
    """Every enrolment on every run of a course Teach Computing knows, fetched concurrently.
    Runs whose report could not be fetched after retries are listed; the rest go on."""
    client = partners_api.client
    with request_tally(client) as requests:
        result = fetch_course_enrolments(client, course_runs)
    failed, rejected = result.failed_runs, result.rejections
    if not failed.empty:
        context.log.error(
            f"{len(failed)} enrolment report(s) could not be fetched; their courses will be skipped"
        )
    yield dg.Output(
        result,
        metadata={
            "runs_fetched": result.runs_fetched,
            "runs_failed": len(failed),
            "enrolments": len(result.enrolments),
            "memberships": int(result.enrolments["membership_uuid"].nunique()),
            "records_rejected": len(rejected),
            "failed_runs": table(failed),
            **requests,
        },
    )
    yield dg.AssetCheckResult(
        check_name="all_runs_fetched",
        passed=failed.empty,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"runs_failed": len(failed), "failed_runs": table(failed)},
    )
    yield dg.AssetCheckResult(
        check_name="no_malformed_enrolments",
        passed=rejected.empty,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"records_rejected": len(rejected), "first_reasons": table(rejected, limit=5)},
    )


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
