"""The Sidekiq payloads, as pure functions: ActiveJob 6.1's serialize and its Sidekiq adapter.

The formats here were read from activejob 6.1.7.10 and sidekiq 6.4.1 (Debian bookworm's
ruby-activejob and ruby-sidekiq); test_sidekiq_delivery.py checks them against those gems.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from partners_dagster.sidekiq.payload import (
    ASSESSMENT_ELIGIBILITY_JOB,
    AUTO_ENROL_JOB,
    CERTIFICATE_PENDING_TRANSITION_JOB,
    CHECK_NEXT_STEPS_JOB,
    COMPLETE_ACHIEVEMENT_EMAIL_JOB,
    GLOBALID_APP_PLACEHOLDER,
    ISSUE_BADGE_JOB,
    JOB_CLASSES,
    JOB_WRAPPER_CLASS,
    OutboxRow,
    build_payload,
    encode_payload,
    job_id_for,
    keyword_arguments,
    new_jid,
    programme_globalid,
    resolve_globalids,
    serialize_arguments,
    serialize_job,
)

NOW = datetime(2025, 3, 4, 5, 6, 7, 891_000, tzinfo=UTC)
CREATED = datetime(2025, 3, 4, 1, 0, 0, tzinfo=UTC)
USER = "0b9b5b4e-3f0a-4c55-9d55-0c1b8f1f2a01"
ACHIEVEMENT = "7d3c9a52-1b7e-4f7a-8a1c-5e2d4b6f9c02"
ACTIVITY = "c1e2d3f4-a5b6-4c7d-8e9f-0a1b2c3d4e03"
JID = "0123456789abcdef01234567"


def row(job_class: str, arguments: list, run_at: datetime = NOW, **extra) -> OutboxRow:
    return OutboxRow(
        id=1, job_class=job_class, arguments=arguments, run_at=run_at, created_at=CREATED, **extra
    )


@pytest.mark.parametrize(
    ("programme_type", "programme_id", "app", "expected"),
    [
        ("Programmes::PrimaryCertificate", 3, "teach-computing",
         "gid://teach-computing/Programmes::PrimaryCertificate/3"),
        (None, 5, "teach-computing", "gid://teach-computing/Programme/5"),
        ("Programmes::CSAccelerator", "9", "tc-staging", "gid://tc-staging/Programmes::CSAccelerator/9"),
    ],
)  # fmt: skip
def test_programme_is_a_globalid_of_its_sti_class(programme_type, programme_id, app, expected):
    assert programme_globalid(programme_type, programme_id, app=app) == {"_aj_globalid": expected}


def test_keywords_are_marked_as_ruby2_keywords_in_order():
    assert keyword_arguments(source="partners_dagster", b=1) == {
        "source": "partners_dagster",
        "b": 1,
        "_aj_ruby2_keywords": ["source", "b"],
    }


def test_a_reserved_key_cannot_be_a_keyword():
    with pytest.raises(ValueError, match="_aj_globalid"):
        keyword_arguments(_aj_globalid="x")


@pytest.mark.parametrize(
    ("job_class", "fields", "expected"),
    [
        (
            CERTIFICATE_PENDING_TRANSITION_JOB,
            {"programme_type": "Programmes::PrimaryCertificate", "programme_id": 3, "user_id": USER},
            [
                {"_aj_globalid": f"gid://{GLOBALID_APP_PLACEHOLDER}/Programmes::PrimaryCertificate/3"},
                USER,
                {"source": "partners_dagster", "_aj_ruby2_keywords": ["source"]},
            ],
        ),
        (ASSESSMENT_ELIGIBILITY_JOB, {"user_id": USER}, [USER]),
        (ISSUE_BADGE_JOB, {"achievement_id": ACHIEVEMENT}, [ACHIEVEMENT]),
        (CHECK_NEXT_STEPS_JOB, {"achievement_id": ACHIEVEMENT}, [ACHIEVEMENT]),
        (COMPLETE_ACHIEVEMENT_EMAIL_JOB, {"user_id": USER, "activity_id": ACTIVITY}, [USER, ACTIVITY]),
        (
            AUTO_ENROL_JOB,
            {"achievement_id": ACHIEVEMENT},
            [{"achievement_id": ACHIEVEMENT, "_aj_ruby2_keywords": ["achievement_id"]}],
        ),
    ],
)  # fmt: skip
def test_each_jobs_arguments_as_activejob_serializes_them(job_class, fields, expected):
    assert serialize_arguments(job_class, **fields) == expected
    # What is stored in the outbox survives a JSON round trip unchanged.
    assert json.loads(json.dumps(expected)) == expected


def test_every_job_of_the_design_has_a_builder():
    assert set(JOB_CLASSES) == {
        "CertificatePendingTransitionJob",
        "AssessmentEligibilityJob",
        "IssueBadgeJob",
        "CSAccelerator::CheckNextStepsJob",
        "CompleteAchievementEmailJob",
        "CSAccelerator::AutoEnrolJob",
    }


def test_an_unknown_job_class_is_named():
    with pytest.raises(ValueError, match="'NoSuchJob'"):
        serialize_arguments("NoSuchJob", user_id=USER)


def test_placeholder_globalids_get_the_app_and_others_are_kept():
    arguments = [
        {"_aj_globalid": f"gid://{GLOBALID_APP_PLACEHOLDER}/Programme/5"},
        {"_aj_globalid": "gid://other-app/Programme/6"},
        {"nested": [{"_aj_globalid": f"gid://{GLOBALID_APP_PLACEHOLDER}/Programme/7"}]},
        "gid://{globalid_app}/Programme/8",  # a string, not a GlobalID hash
    ]
    assert resolve_globalids(arguments, "teach-computing") == [
        {"_aj_globalid": "gid://teach-computing/Programme/5"},
        {"_aj_globalid": "gid://other-app/Programme/6"},
        {"nested": [{"_aj_globalid": "gid://teach-computing/Programme/7"}]},
        "gid://{globalid_app}/Programme/8",
    ]


def test_an_immediate_job_is_the_job_wrapper_hash_with_enqueued_at():
    arguments = serialize_arguments(
        CERTIFICATE_PENDING_TRANSITION_JOB,
        programme_type="Programmes::PrimaryCertificate",
        programme_id=3,
        user_id=USER,
    )
    payload = build_payload(
        row(CERTIFICATE_PENDING_TRANSITION_JOB, arguments),
        jid=JID,
        globalid_app="teach-computing",
        now=NOW,
    )
    assert payload == {
        "retry": False,
        "queue": "default",
        "class": JOB_WRAPPER_CLASS,
        "wrapped": "CertificatePendingTransitionJob",
        "args": [
            {
                "job_class": "CertificatePendingTransitionJob",
                "job_id": job_id_for(JID),
                "provider_job_id": None,
                "queue_name": "default",
                "priority": None,
                "arguments": [
                    {"_aj_globalid": "gid://teach-computing/Programmes::PrimaryCertificate/3"},
                    USER,
                    {"source": "partners_dagster", "_aj_ruby2_keywords": ["source"]},
                ],
                "executions": 0,
                "exception_executions": {},
                "locale": "en",
                "timezone": "UTC",
                "enqueued_at": "2025-03-04T05:06:07Z",
            }
        ],
        "jid": JID,
        "created_at": CREATED.timestamp(),
        "enqueued_at": NOW.timestamp(),
    }
    # Sidekiq's key order (defaults merged first), and ActiveJob's.
    assert list(payload) == [
        "retry", "queue", "class", "wrapped", "args", "jid", "created_at", "enqueued_at"
    ]  # fmt: skip
    assert list(payload["args"][0])[-1] == "enqueued_at"
    assert isinstance(payload["created_at"], float)
    assert isinstance(payload["enqueued_at"], float)


def test_a_delayed_job_has_no_sidekiq_enqueued_at_until_the_poller_moves_it():
    payload = build_payload(
        row(ISSUE_BADGE_JOB, [ACHIEVEMENT], run_at=NOW + timedelta(minutes=2)),
        jid=JID,
        globalid_app="teach-computing",
        now=NOW,
    )
    assert "enqueued_at" not in payload
    assert payload["args"][0]["enqueued_at"] == "2025-03-04T05:06:07Z"


def test_a_row_due_or_overdue_goes_to_its_queue():
    overdue = row(CHECK_NEXT_STEPS_JOB, [ACHIEVEMENT], run_at=NOW - timedelta(days=1))
    assert "enqueued_at" in build_payload(overdue, jid=JID, globalid_app="a", now=NOW)


def test_activejob_6_1_enqueued_at_is_whole_seconds_utc():
    later_zone = datetime(2025, 3, 4, 7, 6, 7, 999_999, tzinfo=UTC).astimezone(
        datetime.now().astimezone().tzinfo
    )
    job = serialize_job(
        row(ISSUE_BADGE_JOB, [ACHIEVEMENT]), jid=JID, globalid_app="a", now=later_zone
    )
    assert job["enqueued_at"] == "2025-03-04T07:06:07Z"


def test_naive_datetimes_are_taken_as_utc():
    naive = row(ISSUE_BADGE_JOB, [ACHIEVEMENT], run_at=NOW.replace(tzinfo=None))
    payload = build_payload(naive, jid=JID, globalid_app="a", now=NOW.replace(tzinfo=None))
    assert payload["enqueued_at"] == NOW.timestamp()


def test_job_id_is_a_uuid_fixed_by_the_jid():
    assert uuid.UUID(job_id_for(JID)).version == 5
    assert job_id_for(JID) == job_id_for(JID)
    assert job_id_for(JID) != job_id_for(new_jid())


def test_job_id_is_uuid5_of_the_jid_in_our_namespace():
    # Computed without UUID objects for speed; the value must stay uuid5's.
    namespace = uuid.UUID("5f0c2d7e-4a4b-4f3e-9a65-7d1b2c9e8a10")
    for jid in [JID, "", "é", *(new_jid() for _ in range(2_000))]:
        assert job_id_for(jid) == str(uuid.uuid5(namespace, jid)), jid


def test_jids_are_24_hex_characters_and_differ():
    jids = {new_jid() for _ in range(50)}
    assert len(jids) == 50
    assert all(len(jid) == 24 and int(jid, 16) >= 0 for jid in jids)


def test_arguments_that_are_not_a_list_are_refused_naming_the_row():
    bad = OutboxRow(
        id=42, job_class=ISSUE_BADGE_JOB, arguments={"x": 1}, run_at=NOW, created_at=CREATED
    )
    with pytest.raises(ValueError, match=r"outbox row 42 \(IssueBadgeJob\)"):
        serialize_job(bad, jid=JID, globalid_app="a", now=NOW)


def test_encoding_is_compact_json_keeping_utf8():
    assert encode_payload({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'
