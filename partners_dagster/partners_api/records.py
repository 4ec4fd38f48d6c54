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


# -- the enrolment report's fields -----------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentField:
    """One field of an enrolment report's row: its ``CourseEnrolment`` attribute, where it is
    in the row's JSON, and its kind, which says what it must be:

    - ``uuid``: a UUID string, kept canonical;
    - ``string``: a string;
    - ``timestamp``: null, or an ISO-8601 string with a zone, kept as aware UTC;
    - ``count``: an integer, never negative;
    - ``ratio``: a number from 0 to 1, never clamped.
    """

    name: str
    path: tuple[str, ...]
    kind: str
    required: bool = True  # False: a missing key reads as null
    in_table: bool = True  # a column of the EnrolmentTable the steps work on

    @property
    def dotted(self) -> str:
        """The name a rejection gives it, e.g. ``run.uuid``."""
        return ".".join(self.path)


# The one list of an enrolment report's fields, in the order of the API's JSON. The quick
# reader, the careful reader and the sandbox's JSON follow from it: a new field is a line
# here, an attribute of ``CourseEnrolment``, and its tests.
ENROLMENT_FIELDS = (
    # A table holds one run's report: it keeps the run once, not as a column.
    EnrolmentField("run_uuid", ("run", "uuid"), "uuid", in_table=False),
    EnrolmentField("run_href", ("run", "href"), "string", in_table=False),
    EnrolmentField("membership_uuid", ("organisation_membership", "uuid"), "uuid"),
    EnrolmentField(
        "membership_href", ("organisation_membership", "href"), "string", in_table=False
    ),
    EnrolmentField("status", ("status",), "string"),
    EnrolmentField("activated_at", ("activated_at",), "timestamp", required=False),
    EnrolmentField("deactivated_at", ("deactivated_at",), "timestamp", required=False),
    EnrolmentField("steps_completed_count", ("steps_completed_count",), "count"),
    EnrolmentField("steps_completed_ratio", ("steps_completed_ratio",), "ratio"),
)


def enrolment_row_template(fields: Sequence[EnrolmentField] = ENROLMENT_FIELDS) -> str:
    """A report's row as a ``%``-template: the fields' keys, nested as their paths say, in
    the list's order, each value a ``%s`` to be filled with the value's JSON text."""

    def members(group: Sequence[EnrolmentField], depth: int) -> str:
        parts: list[str] = []
        index = 0
        while index < len(group):
            key = group[index].path[depth]
            end = index
            while end < len(group) and group[end].path[depth] == key:
                end += 1
            same_key = group[index:end]
            if len(same_key[0].path) == depth + 1:
                if len(same_key) != 1:
                    raise ValueError(f"enrolment field {key!r} is declared twice")
                value = "%s"
            else:
                value = members(same_key, depth + 1)
            parts.append(json.dumps(key).replace("%", "%%") + ":" + value)
            index = end
        return "{" + ",".join(parts) + "}"

    return members(fields, 0)


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


# The arrays of an enrolment table: the fields marked in_table, in the list's order.
_TABLE_ARRAYS = tuple(f.name for f in ENROLMENT_FIELDS if f.in_table)
_TABLE_KINDS = {f.name: f.kind for f in ENROLMENT_FIELDS if f.in_table}
# The columns of an enrolment table, in the order of the frames the steps work on.
ENROLMENT_TABLE_COLUMNS = ("run_uuid", *_TABLE_ARRAYS)


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
# The dtypes a stored column of each kind may have (never "O": object arrays would need pickle).
_DTYPE_OF_KIND = {
    "uuid": r"\|S36",  # fixed-width ASCII bytes: canonical UUIDs
    "string": r"<U\d{1,4}",
    "timestamp": r"<M8\[ns\]",  # UTC; NaT for null
    "count": r"<i8",
    "ratio": r"<f8",
}
_TABLE_DTYPES = {name: _DTYPE_OF_KIND[kind] for name, kind in _TABLE_KINDS.items()}


def enrolment_table(report: EnrolmentReport) -> EnrolmentTable:
    """The columns of a parsed report."""
    rows = report.enrolments

    def column(name: str, kind: str) -> np.ndarray:
        values = [getattr(e, name) for e in rows]
        if kind == "timestamp":
            return pd.to_datetime(pd.Series(values, dtype=object), utc=True).to_numpy(
                dtype="datetime64[ns]"
            )
        return np.array(values, dtype=_NUMPY_DTYPE_OF_KIND[kind])

    return EnrolmentTable(
        run_uuid=report.run_uuid,
        rejections=tuple(report.rejections),
        **{name: column(name, kind) for name, kind in _TABLE_KINDS.items()},
    )


_NUMPY_DTYPE_OF_KIND: dict[str, Any] = {
    "uuid": "S36",
    "string": str,
    "timestamp": "datetime64[ns]",
    "count": np.int64,
    "ratio": np.float64,
}


def enrolment_tables_frame(
    tables: Sequence[EnrolmentTable], extra: dict[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """One frame of ``ENROLMENT_TABLE_COLUMNS`` (UUIDs and strings as ``str`` objects, times
    as UTC datetimes) from many tables, plus ``extra`` columns given one value per table."""
    lengths = [len(t) for t in tables]

    def joined(name: str, kind: str) -> Any:
        parts = [getattr(t, name) for t in tables]
        array = np.concatenate(parts) if parts else np.array([], dtype=_NUMPY_DTYPE_OF_KIND[kind])
        if kind == "uuid":
            return np.array(array.astype(str).tolist(), dtype=object)
        if kind == "string":
            return np.array(array.tolist(), dtype=object)
        if kind == "timestamp":
            return pd.to_datetime(array, utc=True)
        return array

    def per_table(values: Sequence[str]) -> np.ndarray:
        return np.repeat(np.array(list(values), dtype=object), lengths)

    frame = pd.DataFrame(
        {
            "run_uuid": per_table([t.run_uuid for t in tables]),
            **{name: joined(name, kind) for name, kind in _TABLE_KINDS.items()},
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


# The careful reader's rule for each kind of field: the value and the field's dotted name in,
# the kept value out, or a RecordError naming the field.
_READ_CAREFULLY: dict[str, Callable[[Any, str], Any]] = {
    "uuid": _uuid,
    "string": _str,
    "timestamp": timestamp,
    "count": _int,
    "ratio": lambda value, name: ratio(value),
}
# The quick reader's test for each kind (a Python expression of the value ``{0}``): true only
# for the values the careful reader keeps as they are. Timestamps are read by ``_plain_time``.
_PLAIN: dict[str, str] = {
    "uuid": "type({0}) is str and _CANONICAL_UUID.fullmatch({0})",
    "string": "type({0}) is str",
    "timestamp": "",
    "count": "type({0}) is int and {0} >= 0",
    "ratio": "type({0}) is float and 0.0 <= {0} <= 1.0",
}


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


def _quick_reader_source(fields: Sequence[EnrolmentField]) -> str:
    """The quick reader's code, written out from the fields: each read in one step inside a
    ``try``, then every test in one condition (see ``_well_formed_enrolment``)."""
    reads: list[str] = []
    tests = ["type(value) is dict"]
    holders: dict[tuple[str, ...], str] = {(): "value"}
    for f in fields:
        if f.kind not in _PLAIN:
            raise ValueError(f"enrolment field {f.name!r} has an unknown kind {f.kind!r}")
        for depth in range(1, len(f.path)):
            if f.path[:depth] not in holders:
                holder = "h_" + "_".join(f.path[:depth])
                reads.append(f"{holder} = {holders[f.path[: depth - 1]]}[{f.path[depth - 1]!r}]")
                holders[f.path[:depth]] = holder
        holder, key, name = holders[f.path[:-1]], f.path[-1], f"f_{f.name}"
        read = f"{holder}[{key!r}]" if f.required else f"{holder}.get({key!r})"
        reads.append(
            f"{name} = _plain_time({read})" if f.kind == "timestamp" else f"{name} = {read}"
        )
        if _PLAIN[f.kind]:
            tests.append(_PLAIN[f.kind].format(name))
    record = ", ".join(f"{f.name}=f_{f.name}" for f in fields)
    return "\n".join(
        ["def _well_formed_enrolment(value):", "    try:"]
        + [f"        {line}" for line in reads]
        + [
            "    except (KeyError, TypeError, AttributeError, ValueError, IndexError, _NotPlain):",
            "        return None",
            "    if not (" + " and ".join(f"({test})" for test in tests) + "):",
            "        return None",
            f"    return CourseEnrolment({record})",
        ]
    )


def _compile_quick_reader(fields: Sequence[EnrolmentField]) -> Callable[[Any], Any]:
    namespace = {
        "CourseEnrolment": CourseEnrolment,
        "_plain_time": _plain_time,
        "_CANONICAL_UUID": _CANONICAL_UUID,
        "_NotPlain": _NotPlain,
    }
    exec(compile(_quick_reader_source(fields), "<enrolment quick reader>", "exec"), namespace)
    return namespace["_well_formed_enrolment"]


# The common record, read in a few steps: a report holds tens of thousands, and this is most
# of what a night spends on them. Anything unusual returns None, for the field-by-field
# reader, which gives the same record or says what is wrong. It is written out from
# ENROLMENT_FIELDS once, at import, as a loop over them would take twice as long.
_well_formed_enrolment: Callable[[Any], CourseEnrolment | None] = _compile_quick_reader(
    ENROLMENT_FIELDS
)


def _at(obj: dict, f: EnrolmentField) -> Any:
    """The field's value in a row, or a RecordError naming what is missing or not an object."""
    for depth, key in enumerate(f.path[:-1]):
        obj = _field(obj, key)
        if not isinstance(obj, dict):
            keys = _KEYS_UNDER[f.path[: depth + 1]]
            raise RecordError(f"{'.'.join(f.path[: depth + 1])} must be an object with {keys}")
    return _field(obj, f.path[-1]) if f.required else obj.get(f.path[-1])


def _keys_under(fields: Sequence[EnrolmentField]) -> dict[tuple[str, ...], str]:
    """For each object in a row, its keys as a rejection names them: ``uuid and href``."""
    keys: dict[tuple[str, ...], list[str]] = {}
    for f in fields:
        for depth in range(1, len(f.path)):
            under = keys.setdefault(f.path[:depth], [])
            if f.path[depth] not in under:
                under.append(f.path[depth])
    return {prefix: " and ".join(names) for prefix, names in keys.items()}


_KEYS_UNDER = _keys_under(ENROLMENT_FIELDS)


def _enrolment_field_by_field(value: Any) -> CourseEnrolment:
    obj = _object(value)
    return CourseEnrolment(
        **{f.name: _READ_CAREFULLY[f.kind](_at(obj, f), f.dotted) for f in ENROLMENT_FIELDS}
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
