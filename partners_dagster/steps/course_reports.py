"""Course runs and their enrolment reports, as frames the pipeline works on."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from ..partners_api.errors import PartnersApiError
from ..partners_api.records import EnrolmentTable, enrolment_tables_frame
from ..rules import report_shrank

if TYPE_CHECKING:
    from ..partners_api.client import PartnersApiClient
    from ..partners_api.records import CourseRun, Rejection

RUN_COLUMNS = ["run_uuid", "course_uuid", "title", "start_time", "weeks_count", "full_code", "code"]
REPORT_SIZE_COLUMNS = ["run_uuid", "course_uuid", "enrolments"]
SHRUNK_COLUMNS = ["run_uuid", "course_uuid", "remembered", "enrolments"]
ENROLMENT_COLUMNS = [
    "run_uuid",
    "membership_uuid",
    "status",
    "activated_at",
    "deactivated_at",
    "steps_completed_count",
    "steps_completed_ratio",
]


def course_runs_frame(
    runs: Iterable[CourseRun],
    known_course_uuids: Iterable[str],
    ignored: Iterable[str],
    rejections: Iterable[Rejection] = (),
) -> pd.DataFrame:
    """One row per run, with whether Teach Computing knows its course and whether it is ignored.
    A run record that was malformed is kept as a row with its ``malformed`` reason and, where
    the record said, its course: that course cannot be read whole tonight."""
    frame = pd.DataFrame(
        [
            (r.uuid, r.course_uuid, r.title, r.start_time, r.weeks_count, r.full_code, r.code, None)
            for r in runs
        ]
        + [(None, r.key, None, None, None, None, None, r.reason) for r in rejections],
        columns=[*RUN_COLUMNS, "malformed"],
    )
    frame["start_time"] = pd.to_datetime(frame["start_time"], utc=True)
    frame["known"] = frame["course_uuid"].isin(set(known_course_uuids))
    frame["ignored"] = frame["course_uuid"].isin(set(ignored)) & ~frame["known"]
    return frame


@dataclass(frozen=True)
class CourseRunsRead:
    frame: pd.DataFrame  # see course_runs_frame
    runs: list[CourseRun]
    rejections: list[Rejection]


def read_course_runs(
    client: PartnersApiClient, known_course_uuids: Iterable[str], ignored: Iterable[str]
) -> CourseRunsRead:
    """Every run the partner can see (one API call, through the response cache), as a frame."""
    runs, rejections = client.course_runs()
    return CourseRunsRead(
        course_runs_frame(runs, known_course_uuids, ignored, rejections), runs, rejections
    )


def unknown_courses(runs: pd.DataFrame) -> pd.DataFrame:
    """Courses no activity knows and nobody asked us to ignore: one row each, with its title."""
    unknown = runs[~runs["known"] & ~runs["ignored"] & runs["malformed"].isna()]
    return (
        unknown.groupby("course_uuid", sort=True)
        .agg(title=("title", "first"), runs=("run_uuid", "count"))
        .reset_index()
    )


def scoped_runs(runs: pd.DataFrame, courses: Collection[str]) -> pd.DataFrame:
    """Only the runs of ``courses`` (a scoped run reads nothing else)."""
    return runs[runs["course_uuid"].isin(set(courses))].reset_index(drop=True)


@dataclass(frozen=True)
class RunsListed:
    runs: int
    runs_of_known_courses: int

    @property
    def ok(self) -> bool:
        return self.runs_of_known_courses > 0

    @property
    def problem(self) -> str | None:
        if self.runs == 0:
            return "the API lists no course run at all (the partner account may have lost access)"
        if self.runs_of_known_courses == 0:
            return (
                f"the API lists {self.runs} course run(s), none of a course Teach Computing "
                "knows (the partner account may have lost access)"
            )
        return None


def runs_listed(runs: pd.DataFrame) -> RunsListed:
    """A night on which the API lists no run at all, or no run of a known course, changes
    nothing: its check fails (an empty list would otherwise be a silent success)."""
    readable = runs[runs["malformed"].isna()]
    return RunsListed(len(runs), int(readable["known"].sum()))


@dataclass(frozen=True)
class CourseEnrolments:
    """Every enrolment on every run of a known course, and what could not be read."""

    enrolments: pd.DataFrame  # ENROLMENT_COLUMNS + course_uuid
    failed_runs: pd.DataFrame  # run_uuid, course_uuid, error (shrunk reports included)
    rejections: pd.DataFrame  # run_uuid, course_uuid, index, key, reason
    runs_fetched: int
    # Each report read tonight and accepted as whole: run_uuid, course_uuid, enrolments
    # (records on it, malformed ones included), to remember for tomorrow's comparison.
    report_sizes: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=REPORT_SIZE_COLUMNS)
    )
    # Reports that shrank (not read whole): run_uuid, course_uuid, remembered, enrolments.
    shrunk_reports: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=SHRUNK_COLUMNS)
    )


def fetch_course_enrolments(
    client: PartnersApiClient,
    runs: pd.DataFrame,
    remembered_sizes: Mapping[str, int] | None = None,
    accept_sizes_of: Collection[str] = (),
) -> CourseEnrolments:
    """Fetch the reports of every run of a known course, concurrently; failures are listed.
    A report that shrank from its ``remembered_sizes`` (run_uuid -> enrolments) is not read
    whole (``report_shrank``): listed as failed, its course untouched tonight, unless its run
    is in ``accept_sizes_of`` (an operator accepted the new size)."""
    remembered_sizes = remembered_sizes or {}
    accepted = set(accept_sizes_of)
    readable = runs[runs["malformed"].isna()]
    known = readable[readable["known"]]
    course_of_run = dict(zip(known["run_uuid"], known["course_uuid"], strict=True))
    tables: list[EnrolmentTable] = []
    failed: list[tuple[str, str, str]] = []
    rejected: list[tuple] = []
    sizes: list[tuple[str, str, int]] = []
    shrunk: list[tuple[str, str, int, int]] = []
    # Columns, not records: an unchanged report's are kept by the client, never parsed again.
    for run_uuid, result in client.enrolment_tables(sorted(course_of_run)):
        course_uuid = course_of_run[run_uuid]
        if isinstance(result, PartnersApiError):
            failed.append((run_uuid, course_uuid, str(result)))
            continue
        size = len(result) + len(result.rejections)
        remembered = remembered_sizes.get(run_uuid)
        if run_uuid not in accepted and report_shrank(remembered, size):
            shrunk.append((run_uuid, course_uuid, remembered, size))
            failed.append(
                (
                    run_uuid,
                    course_uuid,
                    f"report shrank from {remembered} to {size} enrolment(s): not read as whole "
                    "(if the new size is right, accept it with accept_report_sizes)",
                )
            )
        else:
            sizes.append((run_uuid, course_uuid, size))
        tables.append(result)
        rejected.extend(
            (run_uuid, course_uuid, r.index, r.key, r.reason) for r in result.rejections
        )
    enrolments = enrolment_tables_frame(
        tables, {"course_uuid": [course_of_run[t.run_uuid] for t in tables]}
    )
    return CourseEnrolments(
        enrolments=enrolments,
        failed_runs=pd.DataFrame(
            spoiled_by_malformed_runs(runs) + failed, columns=["run_uuid", "course_uuid", "error"]
        ),
        rejections=pd.DataFrame(
            rejected, columns=["run_uuid", "course_uuid", "index", "key", "reason"]
        ),
        runs_fetched=len(course_of_run) - len(failed) + len(shrunk),
        report_sizes=pd.DataFrame(sizes, columns=REPORT_SIZE_COLUMNS),
        shrunk_reports=pd.DataFrame(shrunk, columns=SHRUNK_COLUMNS),
    )


def spoiled_by_malformed_runs(runs: pd.DataFrame) -> list[tuple[str, str, str]]:
    """A malformed run record spoils its known course; one that does not say which course
    it belongs to could be any of them, so it spoils every known course."""
    known_courses = sorted(set(runs.loc[runs["known"], "course_uuid"]))
    failed = []
    bad = runs.loc[runs["malformed"].notna(), ["course_uuid", "known", "malformed"]]
    for course_uuid, known, reason in bad.itertuples(index=False):
        if course_uuid is None:
            failed += [("(malformed run record)", course, reason) for course in known_courses]
        elif known:
            failed.append(("(malformed run record)", course_uuid, reason))
    return failed
