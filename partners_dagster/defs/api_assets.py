"""The API assets both jobs share: course runs, and the enrolment reports of known courses."""

import dagster as dg
import pandas as pd

from ..partners_api.errors import UnauthorizedError
from ..partners_api.resource import PartnersApiResource
from ..steps import asset_values
from ..steps.course_reports import runs_listed, scoped_runs, unknown_courses
from ..teachcomputing.resource import TeachComputingDatabaseResource
from .alerts import report_auth_failure, report_unknown_courses
from .constants import API_POOL, GROUP, PROGRESS_JOB
from .failures import fails_in_one_line
from .metadata import content_version, request_tally, table
from .night_asset import night_asset
from .run_options import RunOptions

COURSE_RUNS = dg.AssetKey("course_runs")


# A multi-asset of one, so that a job can leave out a check: step 2 does not evaluate
# no_unknown_courses (jobs.py).
@dg.multi_asset(
    outs={
        "course_runs": dg.AssetOut(
            group_name=GROUP,
            kinds={"python", "pandas"},
            description="Every FutureLearn course run the partner can see, with whether Teach "
            "Computing knows its course (an activity holds its UUID) or has asked to ignore it.",
        )
    },
    can_subset=True,
    pool=API_POOL,
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
        dg.AssetCheckSpec(
            "runs_of_known_courses_listed",
            asset="course_runs",
            description="The API lists course runs, and some of a course Teach Computing knows "
            "(none: the partner account may have lost access). Blocks the rest of the run.",
            blocking=True,
        ),
    ],
)
@fails_in_one_line
def course_runs(
    context: dg.AssetExecutionContext,
    partners_api: PartnersApiResource,
    teachcomputing_db: TeachComputingDatabaseResource,
    run_options: RunOptions,
):  # MaterializeResult[...] with checks: Dagster reads the value as untyped
    """Every FutureLearn course run the partner can see, with whether Teach Computing knows its
    course (an activity holds its UUID) or has asked to ignore it. A scoped run keeps only
    the runs of its courses."""
    repository = teachcomputing_db.repository()
    scope = run_options.scope(repository)
    client = partners_api.client_for(run_options)
    with request_tally(client) as requests:
        try:
            read = asset_values.course_runs(client, repository, partners_api.ignored_courses)
        except UnauthorizedError as error:
            report_auth_failure(error, endpoint="course_runs", run_id=context.run.run_id)
            raise
    frame, runs, rejections = read.frame, read.runs, read.rejections
    unknown = unknown_courses(frame)
    courses = frame[frame["malformed"].isna()].drop_duplicates("course_uuid")
    # Step 1 reports unknown courses (to Sentry too, when set); step 2 does not again, and a
    # scoped run is about its own courses.
    reports_unknown = context.job_def.name != PROGRESS_JOB and scope.courses is None
    if not unknown.empty and reports_unknown:
        if not run_options.dry_run:
            report_unknown_courses(unknown["title"], run_id=context.run.run_id)
        context.log.warning(
            f"{len(unknown)} FutureLearn course(s) unknown to Teach Computing: {', '.join(unknown['title'])}"
        )
    if scope.courses is not None:
        frame = scoped_runs(frame, scope.courses)
    listed = runs_listed(frame)
    checks = [
        dg.AssetCheckResult(
            check_name="runs_of_known_courses_listed",
            passed=listed.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            description=listed.problem,
            metadata={"runs": listed.runs, "runs_of_known_courses": listed.runs_of_known_courses},
        ),
        dg.AssetCheckResult(
            check_name="no_unknown_courses",
            passed=unknown.empty,
            severity=dg.AssetCheckSeverity.WARN,
            description=None
            if unknown.empty
            else "Add an activity for each course, or list it in FL_PARTNERS_IGNORED_COURSE_UUIDS.",
            metadata={"unknown_courses": len(unknown), "courses": table(unknown)},
        ),
        dg.AssetCheckResult(
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
        ),
    ]
    if not listed.ok:
        context.log.error(f"{listed.problem}: nothing will be changed")
    yield dg.Output(
        frame,
        output_name="course_runs",
        data_version=content_version(frame),  # same answers, same version: no false "Unsynced"
        metadata={
            "runs": len(runs),
            "courses": len(courses),
            "courses_known": int(courses["known"].sum()),
            "courses_unknown": len(unknown),
            "courses_ignored": int(courses["ignored"].sum()),
            "runs_rejected": len(rejections),
            **({"unknown_courses": table(unknown)} if reports_unknown else {}),
            "scope": scope.describe(),
            **requests,
        },
    )
    # Only the checks this run selected: step 2's job leaves out no_unknown_courses.
    selected = context.selected_asset_check_keys
    yield from (c for c in checks if dg.AssetCheckKey(COURSE_RUNS, c.check_name) in selected)


@night_asset(
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
@fails_in_one_line
def course_enrolments(
    context: dg.AssetExecutionContext,
    partners_api: PartnersApiResource,
    teachcomputing_db: TeachComputingDatabaseResource,
    run_options: RunOptions,
    course_runs: pd.DataFrame,
):  # MaterializeResult[...] with checks: Dagster reads the value as untyped
    """Every enrolment on every run of a course Teach Computing knows, fetched concurrently.
    Runs whose report could not be fetched after retries, or shrank (empty, or under half
    its last size), are listed and their courses left alone tonight; the rest go on."""
    client = partners_api.client_for(run_options)
    repository = teachcomputing_db.repository()
    with request_tally(client) as requests:
        result = asset_values.course_enrolments(
            client, repository, course_runs, run_options.accept_report_sizes
        )
    if not run_options.dry_run:
        repository.remember_report_sizes(result.report_sizes, context.run.run_id)
    if not result.shrunk_reports.empty:
        context.log.warning(
            f"{len(result.shrunk_reports)} report(s) shrank (empty, or under half their last "
            "size): their courses are left alone tonight. If a new size is right, accept it "
            "with run config run_options.accept_report_sizes."
        )
    failed, rejected = result.failed_runs, result.rejections
    if not failed.empty:
        context.log.error(
            f"{len(failed)} enrolment report(s) could not be fetched; their courses will be skipped"
        )
    return dg.MaterializeResult(
        value=result,
        data_version=content_version(result.enrolments, failed),
        metadata={
            "runs_fetched": result.runs_fetched,
            "runs_failed": len(failed),
            "enrolments": len(result.enrolments),
            "memberships": int(result.enrolments["membership_uuid"].nunique()),
            "records_rejected": len(rejected),
            "reports_shrunk": len(result.shrunk_reports),
            "failed_runs": table(failed),
            **requests,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="all_runs_fetched",
                passed=failed.empty,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"runs_failed": len(failed), "failed_runs": table(failed)},
            ),
            dg.AssetCheckResult(
                check_name="no_malformed_enrolments",
                passed=rejected.empty,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "records_rejected": len(rejected),
                    "first_reasons": table(rejected, limit=5),
                },
            ),
        ],
    )
