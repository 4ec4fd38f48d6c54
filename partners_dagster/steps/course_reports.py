"""Course runs and their enrolment reports, as frames the pipeline works on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ..partners_api.errors import PartnersApiError
from ..partners_api.records import EnrolmentTable, enrolment_tables_frame

if TYPE_CHECKING:
    from ..partners_api.client import PartnersApiClient
    from ..partners_api.records import CourseRun, Rejection

RUN_COLUMNS = ["run_uuid", "course_uuid", "title", "start_time", "weeks_count", "full_code", "code"]
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


@dataclass(frozen=True)
class CourseEnrolments:
    """Every enrolment on every run of a known course, and what could not be read."""

    enrolments: pd.DataFrame  # ENROLMENT_COLUMNS + course_uuid
    failed_runs: pd.DataFrame  # run_uuid, course_uuid, error
    rejections: pd.DataFrame  # run_uuid, course_uuid, index, key, reason
    runs_fetched: int


def fetch_course_enrolments(client: PartnersApiClient, runs: pd.DataFrame) -> CourseEnrolments:
    """Fetch the reports of every run of a known course, concurrently; failures are listed."""
    readable = runs[runs["malformed"].isna()]
    known = readable[readable["known"]]
    course_of_run = dict(zip(known["run_uuid"], known["course_uuid"], strict=True))
    tables: list[EnrolmentTable] = []
    failed: list[tuple[str, str, str]] = []
    rejected: list[tuple] = []
    # Columns, not records: an unchanged report's are kept by the client, never parsed again.
    for run_uuid, result in client.enrolment_tables(sorted(course_of_run)):
        course_uuid = course_of_run[run_uuid]
        if isinstance(result, PartnersApiError):
            failed.append((run_uuid, course_uuid, str(result)))
            continue
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
        runs_fetched=len(course_of_run) - len(failed),
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
