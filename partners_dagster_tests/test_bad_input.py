"""Malformed API data, generated: every defect is a counted rejection naming the record and
the reason; nothing escapes as a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from partners_dagster.partners_api import MalformedResponseError
from partners_dagster.partners_api.records import parse_course_runs, parse_enrolment_report
from partners_dagster.privacy import mask_email, mask_url_passwords
from partners_dagster.rules import match_user, normalise_email, user_ids_by_email

RUN = "545ba924-9e73-4a30-bd54-4fb7dee8b913"
MEMBER = "8e89c1b4-d5c0-4208-b4ad-52928f37ab3f"
GOOD = {
    "run": {"uuid": RUN, "href": "h"},
    "organisation_membership": {"uuid": MEMBER, "href": "h"},
    "status": "active",
    "activated_at": "2019-01-29T11:47:10.000Z",
    "deactivated_at": None,
    "steps_completed_count": 3,
    "steps_completed_ratio": 0.5,
}

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.just("2019-01-29T11:47:10"),  # no time zone
    st.just("not-a-uuid"),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def damaged_enrolment(draw):
    record = json.loads(json.dumps(GOOD))
    field = draw(st.sampled_from(sorted(GOOD)))
    if draw(st.booleans()):
        del record[field]
    else:
        record[field] = draw(junk)
    return record


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.just(GOOD), damaged_enrolment(), junk), max_size=12))
def test_damaged_report_rows_are_rejected_one_by_one(rows):
    report = parse_enrolment_report(RUN, rows, endpoint="report", status=200, raw=b"")
    assert len(report.enrolments) + len(report.rejections) == len(rows)
    for rejection in report.rejections:
        assert rows[rejection.index] != GOOD
        assert rejection.reason
    assert len(report.enrolments) >= sum(1 for r in rows if r == GOOD)
    for enrolment in report.enrolments:
        assert 0.0 <= enrolment.steps_completed_ratio <= 1.0
        assert enrolment.activated_at is None or enrolment.activated_at.tzinfo is not None


@settings(max_examples=200)
@given(junk)
def test_a_body_of_the_wrong_shape_is_a_malformed_response_or_all_rejections(body):
    raw = json.dumps(body, default=str).encode()
    if not isinstance(body, list):
        with pytest.raises(
            MalformedResponseError, match=r"course_runs: malformed response \(HTTP 200\)"
        ):
            parse_course_runs(body, endpoint="course_runs", status=200, raw=raw)
        return
    runs, rejections = parse_course_runs(body, endpoint="course_runs", status=200, raw=raw)
    assert runs == [] and len(rejections) == len(body)
    assert all("expected a JSON object" in r.reason for r in rejections)


def test_duplicate_enrolments_and_a_very_large_report():
    rows = [dict(GOOD, organisation_membership={"uuid": MEMBER, "href": "h"}) for _ in range(3)]
    big = rows + [
        dict(
            GOOD, organisation_membership={"uuid": f"00000000-0000-4000-8000-{i:012d}", "href": "h"}
        )
        for i in range(60_000)
    ]
    report = parse_enrolment_report(RUN, big, endpoint="report", status=200, raw=b"")
    assert len(report.enrolments) == 60_003 and not report.rejections


@settings(max_examples=300)
@given(st.text(max_size=80))
# Found by hypothesis: an address without a domain was shown unmasked.
@example("00@")
@example("  Jo_Smith@School.Example.org ")
def test_any_unicode_external_learner_id_matches_safely(external_id):
    users = {"11111111-1111-4111-8111-111111111111"}
    emails = user_ids_by_email(
        ["11111111-1111-4111-8111-111111111111"], ["Jo_Smith@School.Example.org"]
    )
    match = match_user(external_id, users, emails)
    expected = normalise_email(external_id) == "jo_smith@school.example.org"
    assert (match.user_id is not None) == expected
    local = external_id.split("@")[0].strip()
    if "@" in external_id and len(local) > 1 and local.isalnum():
        assert local not in mask_email(external_id).split("@")[0]  # only its first letter shows


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("jo.smith@school.org", "j***@s***.org"),
        ("00@", "0***@***"),  # no domain: still masked (hypothesis found it shown whole)
        ("a@x.org,b@y.org", "a***@y***.org"),  # hardening 13: the second address is gone
        ("x" * 80 + "@school.org", "x***@s***.org"),  # a local part over 64 characters
        ("@school.org", "***@s***.org"),
        ("11111111-1111-4111-8111-111111111111", "11111111-1111-4111-8111-111111111111"),
        ("not an email", "n***"),
        (None, None),
    ],
)
def test_mask_email_shows_one_character_of_each_part_whatever_the_shape(text, masked):
    assert mask_email(text) == masked


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://partners:s3cr%40t%25@db.example.org:5432/tc",
        "redis://:hunter2@cache:6379/0",
        "redis://default:p@ss:word@cache:6379/0",
    ],
)
def test_mask_url_passwords_hides_every_password(url):
    masked = mask_url_passwords(f"could not connect to '{url}' (timeout)")
    for secret in ("s3cr%40t%25", "hunter2", "p@ss:word"):
        assert secret not in masked
    assert ":***@" in masked and masked.endswith("' (timeout)")
