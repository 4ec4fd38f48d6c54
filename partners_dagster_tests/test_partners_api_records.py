"""The typed records against answers in the recorded shape (fixtures/partners_api) and
against malformed input."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partners_dagster.partners_api import MalformedResponseError, records
from partners_dagster.partners_api.records import (
    RecordError,
    course_enrolment_from_json,
    course_run_from_json,
    organisation_membership_from_json,
    parse_course_runs,
    parse_enrolment_report,
    parse_one,
)

from .conftest import RECORDED

RUN_UUID = "75cafa61-dfa5-51b2-ae35-efc69519984d"
MEMBERSHIP_UUID = "11191a06-f469-5ec9-a1f0-8a4ef9afdabc"


def _recorded(name: str) -> dict:
    return json.loads((RECORDED / name).read_text(encoding="utf-8"))["response"]


def test_recorded_course_runs_parse_completely():
    response = _recorded("course_runs.json")
    runs, rejections = parse_course_runs(
        response["body"], endpoint="course_runs", status=200, raw=b""
    )
    assert rejections == []
    assert len(runs) == 12
    assert len({run.course_uuid for run in runs}) == 4
    first = runs[0]
    assert first.uuid == RUN_UUID
    assert first.start_time == datetime(2026, 1, 5, tzinfo=UTC)
    assert first.weeks_count == 2
    assert first.course_uuid == "d92d8fea-9175-5524-81e0-ea1225d694fe"
    assert {run.full_code for run in runs} >= {None, "networks"}
    assert any("\n" in run.title for run in runs)


def test_recorded_course_run_and_enrolment_report_parse():
    run = course_run_from_json(_recorded(f"course_run_{RUN_UUID[:8]}.json")["body"])
    body = _recorded(f"course_enrolments_report_{RUN_UUID[:8]}.json")["body"]
    report = parse_enrolment_report(run.uuid, body, endpoint="report", status=200, raw=b"")
    assert report.rejections == []
    assert len(report.enrolments) == 8
    deactivated = [e for e in report.enrolments if e.status == "deactivated"]
    assert len(deactivated) == 1
    assert deactivated[0].deactivated_at == datetime(2026, 2, 14, 16, 45, 30, tzinfo=UTC)
    assert all(e.deactivated_at is None for e in report.enrolments if e.status == "active")
    assert {e.steps_completed_ratio for e in report.enrolments} >= {0.0, 1.0, 35 / 36}


def test_recorded_membership_parses():
    membership = organisation_membership_from_json(
        _recorded(f"organisation_membership_{MEMBERSHIP_UUID[:8]}.json")["body"]
    )
    assert membership.uuid == MEMBERSHIP_UUID
    assert membership.learner_uuid == "5260b333-edf9-53d1-ac94-72a32644ac1b"
    assert membership.external_learner_id.startswith("opaque_fixture_")


def _enrolment(**changes) -> dict:
    record = {
        "run": {"uuid": "545ba924-9e73-4a30-bd54-4fb7dee8b913", "href": "h"},
        "organisation_membership": {"uuid": "8e89c1b4-d5c0-4208-b4ad-52928f37ab3f", "href": "h"},
        "status": "active",
        "activated_at": "2019-01-29T11:47:10.000Z",
        "deactivated_at": None,
        "steps_completed_count": 10,
        "steps_completed_ratio": 0.29,
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v != "<missing>"}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"steps_completed_ratio": 1.2}, "steps_completed_ratio must be a number from 0 to 1"),
        ({"steps_completed_ratio": -0.1}, "steps_completed_ratio must be a number from 0 to 1"),
        (
            {"steps_completed_ratio": float("nan")},
            "steps_completed_ratio must be a number from 0 to 1",
        ),
        ({"steps_completed_ratio": "0.5"}, "steps_completed_ratio must be a number"),
        ({"steps_completed_ratio": True}, "steps_completed_ratio must be a number"),
        ({"steps_completed_ratio": "<missing>"}, "missing field 'steps_completed_ratio'"),
        ({"activated_at": "2019-01-29T11:47:10"}, "activated_at has no time zone"),
        ({"activated_at": "yesterday"}, "activated_at is not an ISO-8601 timestamp"),
        ({"steps_completed_count": "3"}, "steps_completed_count must be an integer"),
        (
            {"organisation_membership": {"uuid": "not-a-uuid", "href": "h"}},
            "organisation_membership.uuid is not a UUID",
        ),
        ({"run": "545ba924"}, "run must be an object"),
    ],
)
def test_malformed_enrolment_fields_are_named(changes, reason):
    with pytest.raises(RecordError, match=reason):
        course_enrolment_from_json(_enrolment(**changes))


def test_report_rejects_bad_rows_and_keeps_the_rest():
    run_uuid = "545ba924-9e73-4a30-bd54-4fb7dee8b913"
    other = "11111111-1111-4111-8111-111111111111"
    body = [
        _enrolment(),
        _enrolment(steps_completed_ratio=2),
        "junk",
        _enrolment(run={"uuid": other, "href": "h"}),
    ]
    report = parse_enrolment_report(run_uuid, body, endpoint="report", status=200, raw=b"")
    assert len(report.enrolments) == 1
    assert [(r.index, r.key) for r in report.rejections] == [
        (1, "8e89c1b4-d5c0-4208-b4ad-52928f37ab3f"),
        (2, None),
        (3, "8e89c1b4-d5c0-4208-b4ad-52928f37ab3f"),
    ]
    assert "is not the report's run" in report.rejections[2].reason


def test_timestamps_are_utc_aware_and_null_allowed():
    record = course_enrolment_from_json(_enrolment(activated_at="2019-01-29T12:47:10.000+01:00"))
    assert record.activated_at == datetime(2019, 1, 29, 11, 47, 10, tzinfo=UTC)
    assert course_enrolment_from_json(_enrolment(activated_at=None)).activated_at is None


def test_a_single_resource_with_a_bad_field_is_a_malformed_response():
    with pytest.raises(MalformedResponseError) as raised:
        parse_one(
            {"uuid": "x"},
            organisation_membership_from_json,
            endpoint="organisation_membership",
            status=200,
            raw=b'{"uuid": "x"}',
        )
    message = str(raised.value)
    assert (
        "organisation_membership" in message
        and "HTTP 200" in message
        and '{"uuid": "x"}' in message
    )


def test_a_list_endpoint_that_answers_an_object_is_malformed():
    with pytest.raises(MalformedResponseError, match="expected a JSON array, got dict"):
        parse_course_runs(
            {"error": "nope"}, endpoint="course_runs", status=200, raw=b'{"error": "nope"}'
        )


# -- the quick reader of enrolment records --------------------------------------------------

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "545BA924-9E73-4A30-BD54-4FB7DEE8B913",
            "{545ba924-9e73-4a30-bd54-4fb7dee8b913}",
            "2019-01-29T11:47:10Z",
            "2019-01-29T11:47:10.123456Z",
            "2019-01-29Z",
            "1600-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00+01:00",
            "2019-01-29T11:47:10+00:00",
            "2019-01-29T11:47:10",
            "Z",
            "",
        ]
    ),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["uuid", "href"]), st.text(max_size=4), max_size=2),
)
FIELDS = [
    "run",
    "organisation_membership",
    "status",
    "activated_at",
    "deactivated_at",
    "steps_completed_count",
    "steps_completed_ratio",
]


def _careful(value):
    try:
        return records._enrolment_field_by_field(value)
    except RecordError as error:
        return f"RecordError: {error}"


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from([*FIELDS, "run.uuid", "organisation_membership.uuid", "run.href"]),
        st.one_of(ODD_VALUES, st.just("<missing>")),
        max_size=3,
    )
)
def test_the_quick_enrolment_reader_gives_what_the_careful_one_gives_or_defers(changes):
    record = _enrolment(**{k: v for k, v in changes.items() if "." not in k})
    for path, value in changes.items():
        if "." in path:
            outer, inner = path.split(".")
            if isinstance(record.get(outer), dict):
                record[outer] = {**record[outer], inner: value}
                if value == "<missing>":
                    del record[outer][inner]
    quick = records._well_formed_enrolment(record)
    careful = _careful(record)
    if quick is not None:
        assert quick == careful
    try:
        assert course_enrolment_from_json(record) == careful
    except RecordError as error:
        assert careful == f"RecordError: {error}"


def test_recorded_enrolments_are_read_quickly_and_as_carefully():
    body = _recorded(f"course_enrolments_report_{RUN_UUID[:8]}.json")["body"]
    quick = [records._well_formed_enrolment(item) for item in body]
    assert all(
        q == records._enrolment_field_by_field(item)
        for q, item in zip(quick, body, strict=False)
        if q
    )
    # The quick reader is what a night uses: it must take the real API's records.
    assert all(q is not None for q in quick), quick
