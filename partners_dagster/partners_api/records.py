"""Typed records for the Partners API responses, and their parsers.

Every field of docs/partners-api.md is kept, nulls included. A record that does not
have the documented shape is rejected with a reason naming the field; callers
decide whether one bad record spoils the whole response (a single resource) or
is counted and skipped (one row of an enrolment report).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ..rules import InvalidRatioError, check_ratio
from .errors import MalformedResponseError

T = TypeVar("T")


class RecordError(ValueError):
    """One record does not have the documented shape; the message names the field."""


@dataclass(frozen=True, slots=True)
class CourseRun:
    uuid: str
    href: str
    title: str
    full_code: str | None
    code: str | None
    start_time: datetime | None
    weeks_count: int | None
    course_uuid: str
    course_href: str


@dataclass(frozen=True, slots=True)
class CourseEnrolment:
    run_uuid: str
    run_href: str
    membership_uuid: str
    membership_href: str
    status: str
    activated_at: datetime | None
    deactivated_at: datetime | None
    steps_completed_count: int
    steps_completed_ratio: float


@dataclass(frozen=True, slots=True)
class OrganisationMembership:
    uuid: str
    href: str
    learner_uuid: str | None
    learner_href: str | None
    external_learner_id: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record of a list response that was skipped, and why."""

    index: int
    key: str | None
    reason: str


@dataclass(frozen=True)
class EnrolmentReport:
    run_uuid: str
    enrolments: list[CourseEnrolment]
    rejections: list[Rejection]


# The columns of an enrolment table, in the order of the frames the steps work on.
ENROLMENT_TABLE_COLUMNS = (
    "run_uuid",
    "membership_uuid",
    "status",
    "activated_at",
    "deactivated_at",
    "steps_completed_count",
    "steps_completed_ratio",
)


class TableFormatError(ValueError):
    """Stored bytes that are not an enrolment table (a damaged or foreign entry)."""


@dataclass(frozen=True)
class EnrolmentTable:
    """A parsed enrolment report as columns: what the steps use of it (no hrefs), compact
    enough to keep beside the response cache, so that an unchanged report is not parsed
    again. Stored as numpy arrays in an ``.npz`` (no pickle: loading runs no code)."""

    run_uuid: str
    membership_uuid: np.ndarray  # fixed-width ASCII bytes (S36): canonical UUIDs
    status: np.ndarray  # str
    activated_at: np.ndarray  # datetime64[ns], UTC; NaT for null
    deactivated_at: np.ndarray  # datetime64[ns], UTC; NaT for null
    steps_completed_count: np.ndarray  # int64
    steps_completed_ratio: np.ndarray  # float64
    rejections: tuple[Rejection, ...] = ()

    def __len__(self) -> int:
        return len(self.membership_uuid)

    def to_bytes(self) -> bytes:
        """``TABLE_MAGIC``, the length of a JSON header (4 bytes, big-endian), the header
        (the run, the rejections, and each column's name, numpy dtype and size), then each
        column's raw bytes: read back with ``np.frombuffer``, no pickle, no zip to open."""
        columns = [(name, np.ascontiguousarray(getattr(self, name))) for name in _TABLE_ARRAYS]
        header = json.dumps(
            {
                "run_uuid": self.run_uuid,
                "rejections": [[r.index, r.key, r.reason] for r in self.rejections],
                "columns": [[name, array.dtype.str, array.nbytes] for name, array in columns],
            }
        ).encode()
        return b"".join(
            [TABLE_MAGIC, len(header).to_bytes(4, "big"), header]
            + [array.tobytes() for _, array in columns]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EnrolmentTable:
        try:
            if not data.startswith(TABLE_MAGIC):
                raise ValueError("no table magic")
            start = len(TABLE_MAGIC) + 4
            end = start + int.from_bytes(data[len(TABLE_MAGIC) : start], "big")
            header = json.loads(data[start:end])
            arrays = {}
            view = memoryview(data)
            for name, dtype, size in header["columns"]:
                if name not in _TABLE_DTYPES or not re.fullmatch(_TABLE_DTYPES[name], dtype):
                    raise ValueError(f"unexpected column {name!r} {dtype!r}")
                arrays[name] = np.frombuffer(view[end : end + size], dtype=np.dtype(dtype))
                end += size
            if end != len(data) or set(arrays) != set(_TABLE_ARRAYS):
                raise ValueError("columns do not fill the table")
            if len({len(a) for a in arrays.values()}) != 1:
                raise ValueError("columns of different lengths")
            rejections = tuple(
                Rejection(int(i), None if k is None else str(k), str(reason))
                for i, k, reason in header["rejections"]
            )
            return cls(run_uuid=str(header["run_uuid"]), rejections=rejections, **arrays)
        except Exception as error:  # whatever a damaged entry does, it is not a table
            raise TableFormatError(f"not an enrolment table: {type(error).__name__}") from None


TABLE_MAGIC = b"PDET1\n"  # partners_dagster enrolment table, format 1
_TABLE_ARRAYS = (
    "membership_uuid",
    "status",
    "activated_at",
    "deactivated_at",
    "steps_completed_count",
    "steps_completed_ratio",
)
# The dtypes a stored column may have (never "O": object arrays would need pickle).
_TABLE_DTYPES = {
    "membership_uuid": r"\|S36",
    "status": r"<U\d{1,4}",
    "activated_at": r"<M8\[ns\]",
    "deactivated_at": r"<M8\[ns\]",
    "steps_completed_count": r"<i8",
    "steps_completed_ratio": r"<f8",
}


def enrolment_table(report: EnrolmentReport) -> EnrolmentTable:
    """The columns of a parsed report."""
    rows = report.enrolments

    def times(name: str) -> np.ndarray:
        values = [getattr(e, name) for e in rows]
        return pd.to_datetime(pd.Series(values, dtype=object), utc=True).to_numpy(
            dtype="datetime64[ns]"
        )

    return EnrolmentTable(
        run_uuid=report.run_uuid,
        membership_uuid=np.array([e.membership_uuid for e in rows], dtype="S36"),
        status=np.array([e.status for e in rows], dtype=str),
        activated_at=times("activated_at"),
        deactivated_at=times("deactivated_at"),
        steps_completed_count=np.array([e.steps_completed_count for e in rows], dtype=np.int64),
        steps_completed_ratio=np.array([e.steps_completed_ratio for e in rows], dtype=np.float64),
        rejections=tuple(report.rejections),
    )


def enrolment_tables_frame(
    tables: Sequence[EnrolmentTable], extra: dict[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """One frame of ``ENROLMENT_TABLE_COLUMNS`` (UUIDs and status as ``str`` objects, times
    as UTC datetimes) from many tables, plus ``extra`` columns given one value per table."""
    lengths = [len(t) for t in tables]

    def joined(name: str, dtype: Any) -> np.ndarray:
        parts = [getattr(t, name) for t in tables]
        return np.concatenate(parts) if parts else np.array([], dtype=dtype)

    def per_table(values: Sequence[str]) -> np.ndarray:
        return np.repeat(np.array(list(values), dtype=object), lengths)

    frame = pd.DataFrame(
        {
            "run_uuid": per_table([t.run_uuid for t in tables]),
            "membership_uuid": np.array(
                joined("membership_uuid", "S36").astype(str).tolist(), dtype=object
            ),
            "status": np.array(joined("status", str).tolist(), dtype=object),
            "activated_at": pd.to_datetime(joined("activated_at", "datetime64[ns]"), utc=True),
            "deactivated_at": pd.to_datetime(joined("deactivated_at", "datetime64[ns]"), utc=True),
            "steps_completed_count": joined("steps_completed_count", np.int64),
            "steps_completed_ratio": joined("steps_completed_ratio", np.float64),
        }
    )
    for name, values in (extra or {}).items():
        frame[name] = per_table(values)
    return frame


# -- field readers -------------------------------------------------------------------------


def _field(obj: dict, name: str) -> Any:
    if name not in obj:
        raise RecordError(f"missing field {name!r}")
    return obj[name]


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{name} must be a UUID string, got {type(value).__name__}")
    if _CANONICAL_UUID.fullmatch(value):
        return value  # what the API sends; parsing it would cost more than the rest of the record
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise RecordError(f"{name} is not a UUID: {value[:60]!r}") from None


def _str(value: Any, name: str, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _int(value: Any, name: str, *, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{name} must be an integer, got {value!r:.60}")
    if value < 0:
        raise RecordError(f"{name} must not be negative, got {value}")
    return value


# The span of pandas' datetime64[ns] (about 1677-09-21 to 2262-04-11), to the microsecond.
EARLIEST_TIMESTAMP = pd.Timestamp.min.ceil("us").to_pydatetime().replace(tzinfo=UTC)
LATEST_TIMESTAMP = pd.Timestamp.max.floor("us").to_pydatetime().replace(tzinfo=UTC)


def timestamp(value: Any, name: str, *, nullable: bool = True) -> datetime | None:
    """An ISO-8601 timestamp with a zone (the API sends UTC with a ``Z``), as aware UTC."""
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{name} must be an ISO-8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RecordError(f"{name} is not an ISO-8601 timestamp: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise RecordError(f"{name} has no time zone: {value[:40]!r}")
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise RecordError(f"{name} is out of range: {value[:40]!r}") from None
    if not EARLIEST_TIMESTAMP <= parsed <= LATEST_TIMESTAMP:
        # pandas holds nanoseconds since 1970 in 64 bits; a date it cannot hold would fail
        # the whole step later, so it is this record that is malformed.
        raise RecordError(
            f"{name} is out of range: {value[:40]!r} is outside "
            f"{EARLIEST_TIMESTAMP:%Y-%m-%d}..{LATEST_TIMESTAMP:%Y-%m-%d}"
        )
    return parsed


def ratio(value: Any) -> float:
    """A completion ratio: a JSON number from 0 to 1. Never clamped."""
    try:
        return check_ratio(value)
    except InvalidRatioError as error:
        raise RecordError(str(error)) from None


def _ref(obj: dict, name: str) -> tuple[str, str]:
    ref = _field(obj, name)
    if not isinstance(ref, dict):
        raise RecordError(f"{name} must be an object with uuid and href")
    return _uuid(_field(ref, "uuid"), f"{name}.uuid"), _str(_field(ref, "href"), f"{name}.href")


def _object(value: Any) -> dict:
    if not isinstance(value, dict):
        raise RecordError(f"expected a JSON object, got {type(value).__name__}")
    return value


# -- record parsers ------------------------------------------------------------------------


def course_run_from_json(value: Any) -> CourseRun:
    obj = _object(value)
    course_uuid, course_href = _ref(obj, "course")
    return CourseRun(
        uuid=_uuid(_field(obj, "uuid"), "uuid"),
        href=_str(_field(obj, "href"), "href"),
        title=_str(_field(obj, "title"), "title"),
        full_code=_str(obj.get("full_code"), "full_code", nullable=True),
        code=_str(obj.get("code"), "code", nullable=True),
        start_time=timestamp(obj.get("start_time"), "start_time"),
        weeks_count=_int(obj.get("weeks_count"), "weeks_count", nullable=True),
        course_uuid=course_uuid,
        course_href=course_href,
    )


def course_enrolment_from_json(value: Any) -> CourseEnrolment:
    return _well_formed_enrolment(value) or _enrolment_field_by_field(value)


class _NotPlain(Exception):
    """A value the quick reader leaves to the field-by-field one."""


def _plain_time(value: Any) -> datetime | None:
    # What the API sends: null, or UTC with a Z, well inside pandas' range.
    if value is None:
        return None
    if type(value) is not str or value[-1:] != "Z":
        raise _NotPlain
    parsed = datetime.fromisoformat(value)  # a ValueError goes to the careful reader too
    if not 1900 <= parsed.year <= 2200:
        raise _NotPlain
    return parsed


def _well_formed_enrolment(value: Any) -> CourseEnrolment | None:
    """The common record, read in a few steps: a report holds tens of thousands, and this
    is most of what a night spends on them. Anything unusual returns None, for the
    field-by-field reader, which gives the same record or says what is wrong."""
    try:
        run, membership = value["run"], value["organisation_membership"]
        run_uuid, run_href = run["uuid"], run["href"]
        membership_uuid, membership_href = membership["uuid"], membership["href"]
        status, count = value["status"], value["steps_completed_count"]
        ratio = value["steps_completed_ratio"]
        activated_at = _plain_time(value.get("activated_at"))
        deactivated_at = _plain_time(value.get("deactivated_at"))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, _NotPlain):
        return None
    if not (
        type(value) is dict
        and type(run_href) is str
        and type(membership_href) is str
        and type(status) is str
        and type(count) is int
        and count >= 0
        and type(ratio) is float
        and 0.0 <= ratio <= 1.0
        and type(run_uuid) is str
        and type(membership_uuid) is str
        and _CANONICAL_UUID.fullmatch(run_uuid)
        and _CANONICAL_UUID.fullmatch(membership_uuid)
    ):
        return None
    return CourseEnrolment(
        run_uuid=run_uuid,
        run_href=run_href,
        membership_uuid=membership_uuid,
        membership_href=membership_href,
        status=status,
        activated_at=activated_at,
        deactivated_at=deactivated_at,
        steps_completed_count=count,
        steps_completed_ratio=ratio,
    )


def _enrolment_field_by_field(value: Any) -> CourseEnrolment:
    obj = _object(value)
    run_uuid, run_href = _ref(obj, "run")
    membership_uuid, membership_href = _ref(obj, "organisation_membership")
    return CourseEnrolment(
        run_uuid=run_uuid,
        run_href=run_href,
        membership_uuid=membership_uuid,
        membership_href=membership_href,
        status=_str(_field(obj, "status"), "status"),
        activated_at=timestamp(obj.get("activated_at"), "activated_at"),
        deactivated_at=timestamp(obj.get("deactivated_at"), "deactivated_at"),
        steps_completed_count=_int(_field(obj, "steps_completed_count"), "steps_completed_count"),
        steps_completed_ratio=ratio(_field(obj, "steps_completed_ratio")),
    )


def organisation_membership_from_json(value: Any) -> OrganisationMembership:
    obj = _object(value)
    learner = obj.get("learner")
    if learner is not None and not isinstance(learner, dict):
        raise RecordError("learner must be an object with uuid and href")
    learner = learner or {}
    return OrganisationMembership(
        uuid=_uuid(_field(obj, "uuid"), "uuid"),
        href=_str(_field(obj, "href"), "href"),
        learner_uuid=_uuid(learner["uuid"], "learner.uuid") if learner.get("uuid") else None,
        learner_href=_str(learner.get("href"), "learner.href", nullable=True),
        external_learner_id=_str(
            _field(obj, "external_learner_id"), "external_learner_id", nullable=True
        ),
    )


# -- whole responses -----------------------------------------------------------------------


def parse_one(
    body: Any, parser: Callable[[Any], T], *, endpoint: str, status: int, raw: bytes
) -> T:
    """A single resource: any defect makes the whole response malformed."""
    try:
        return parser(body)
    except RecordError as error:
        raise MalformedResponseError(
            str(error), endpoint=endpoint, status=status, body=raw
        ) from None


def _expect_list(body: Any, *, endpoint: str, status: int, raw: bytes) -> list:
    if not isinstance(body, list):
        raise MalformedResponseError(
            f"expected a JSON array, got {type(body).__name__}",
            endpoint=endpoint,
            status=status,
            body=raw,
        )
    return body


def parse_course_runs(
    body: Any, *, endpoint: str, status: int, raw: bytes
) -> tuple[list[CourseRun], list[Rejection]]:
    return _parse_list(
        # A rejected run is keyed by its course: that course's enrolments are incomplete tonight.
        body,
        course_run_from_json,
        "course",
        endpoint=endpoint,
        status=status,
        raw=raw,
    )


def parse_enrolment_report(
    run_uuid: str, body: Any, *, endpoint: str, status: int, raw: bytes
) -> EnrolmentReport:
    def parse(item: Any) -> CourseEnrolment:
        record = course_enrolment_from_json(item)
        # A row that names another run would be attributed to the wrong course.
        if record.run_uuid != run_uuid:
            raise RecordError(f"run.uuid {record.run_uuid} is not the report's run {run_uuid}")
        return record

    records, rejections = _parse_list(
        body, parse, "organisation_membership", endpoint=endpoint, status=status, raw=raw
    )
    return EnrolmentReport(run_uuid, records, rejections)


def _parse_list(
    body: Any, parser: Callable[[Any], T], key_field: str, *, endpoint: str, status: int, raw: bytes
) -> tuple[list[T], list[Rejection]]:
    records: list[T] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(_expect_list(body, endpoint=endpoint, status=status, raw=raw)):
        try:
            records.append(parser(item))
        except RecordError as error:
            rejections.append(Rejection(index, _key_of(item, key_field), str(error)))
    return records, rejections


def _key_of(item: Any, key_field: str) -> str | None:
    """Best-effort identifier of a rejected record, for the operator's report."""
    if not isinstance(item, dict):
        return None
    value = item.get(key_field)
    if isinstance(value, dict):
        value = value.get("uuid")
    return str(value)[:60] if value is not None else None
