"""`partners-dagster audit` finds a teacher as the nightly matching does (rules.match_user)
and reads their history through the repository, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from partners_dagster.rules import match_user, user_ids_by_email
from partners_dagster.teachcomputing.models import MembershipLink, User, utcnow
from partners_dagster.teachcomputing.repository import TeachComputingRepository
from partners_dagster.tools.audit import UnknownUserError, audit_user, find_user

JO = "0b9b5b4e-3f0a-4c55-9d55-0c1b8f1f2a01"
AL = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a04"
SAM = "7d3c9a52-1b7e-4f7a-8a1c-5e2d4b6f9c02"
GONE = "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c05"
LINKED = "c1e2d3f4-a5b6-4c7d-8e9f-0a1b2c3d4e03"
BEFORE_US = "d1e2d3f4-a5b6-4c7d-8e9f-0a1b2c3d4e03"


@pytest.fixture
def users(engine):
    with engine.begin() as connection:
        for user in [
            {"id": JO, "email": "Jo.Smith@school.example.org"},
            {"id": AL, "email": " jo.smith@SCHOOL.example.org"},
            # Sam's email is Gone's id: an id that names one user and an email another.
            {"id": SAM, "email": GONE},
            {
                "id": GONE,
                "email": "gone@school.example.org",
                "forgotten": True,
                "future_learn_organisation_memberships": [LINKED, BEFORE_US.upper()],
            },
        ]:
            connection.execute(insert(User), [user])
        connection.execute(
            insert(MembershipLink),
            [
                {
                    "membership_uuid": LINKED,
                    "user_id": GONE,
                    "matched_by": "id",
                    "linked_at": utcnow(),
                    "dagster_run_id": "run-1",
                }
            ],
        )
    return engine


def _matching(engine, who: str):
    frame = TeachComputingRepository(engine).users()
    ids = frame["id"].tolist()
    return match_user(who, set(ids), user_ids_by_email(ids, frame["email"].tolist()))


@pytest.mark.parametrize(
    "who",
    [JO.upper(), f"  {AL} ", "sam@school.example.org", "GONE@school.example.org", " gone@x.org"],
)
def test_audit_finds_a_user_exactly_as_match_user_does(users, who):
    expected = _matching(users, who)
    if expected.user_id is None:
        with pytest.raises(UnknownUserError, match="no Teach Computing user"):
            find_user(users, who)
    else:
        assert find_user(users, who)[0] == expected.user_id


@pytest.mark.parametrize(
    ("who", "candidates"),
    [("JO.SMITH@school.example.org", {JO, AL}), (GONE, {SAM, GONE})],
)
def test_audit_refuses_an_id_or_email_that_names_two_users_and_lists_both(users, who, candidates):
    with pytest.raises(UnknownUserError, match="audit one by id") as refused:
        find_user(users, who)
    assert all(user_id in str(refused.value) for user_id in candidates)
    assert "jo.smith@" not in str(refused.value).lower()


def test_audit_finds_a_forgotten_user_and_their_memberships_linked_before_us(users):
    audit = audit_user(users, "gone@school.example.org")
    assert (audit.user_id, audit.email) == (GONE, "gone@school.example.org")
    rows = audit.memberships.set_index("uuid")
    assert rows.at[LINKED, "dagster_run_id"] == "run-1"
    assert rows.at[LINKED, "matched_by"] == "id"
    assert rows["linked_at"].isna().tolist() == [False, True]
    assert rows.index.tolist() == [LINKED, BEFORE_US]
    assert audit.achievements.empty and audit.transitions.empty
