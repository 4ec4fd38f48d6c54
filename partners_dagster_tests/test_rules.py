"""Every rule of docs/rules.md as tables of cases, plus properties (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from partners_dagster.rules import (
    Enrolment,
    InvalidRatioError,
    Programme,
    ProgrammeEnrolment,
    State,
    auto_enrol_job,
    completion_jobs,
    latest_enrolment,
    match_user,
    next_achievement,
    normalise_email,
    pick_latest_enrolment_rows,
    programme_for_new_achievement,
    progress_from_ratio,
    progress_from_ratios,
    transition_metadata,
    user_ids_by_email,
)

T0 = datetime(2027, 1, 10, 9, 0, tzinfo=UTC)
ALICE = "aaaaaaaa-0000-4000-8000-000000000001"
BOB = "bbbbbbbb-0000-4000-8000-000000000002"

# -- progress ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "progress"),
    [
        (0.0, 0),
        (0, 0),
        (0.009, 0),
        (0.01, 1),
        (0.29, 29),
        (0.58, 58),
        (0.57, 57),
        (0.59, 59),
        (0.6, 60),
        (0.9722222222222222, 97),
        (0.999, 99),
        (1.0, 100),
        (1, 100),
        (Decimal("0.58"), 58),
        (35 / 36, 97),
        (29 / 100, 29),
    ],
)
def test_progress_is_the_exact_floor(ratio, progress):
    assert progress_from_ratio(ratio) == progress


def test_binary_floating_point_would_have_got_these_wrong():
    import math

    assert (math.floor(0.29 * 100), math.floor(0.58 * 100)) == (28, 57)
    assert (progress_from_ratio(0.29), progress_from_ratio(0.58)) == (29, 58)


@pytest.mark.parametrize(
    "ratio", [-0.01, 1.0000001, 2, float("nan"), float("inf"), "0.5", None, True, [0.5]]
)
def test_bad_ratios_are_rejected_not_clamped(ratio):
    with pytest.raises(
        InvalidRatioError, match="steps_completed_ratio must be a number from 0 to 1"
    ):
        progress_from_ratio(ratio)


def test_column_progress_matches_the_scalar_rule():
    ratios = pd.Series([0.29, 0.58, 1.0, 0.0, 0.29, 35 / 36])
    assert progress_from_ratios(ratios).tolist() == [29, 58, 100, 0, 29, 97]


# -- matching -------------------------------------------------------------------------------

USERS = {ALICE, BOB}
EMAILS = user_ids_by_email([ALICE, BOB], ["Alice.A@school.org", "b_b@school.org"])


@pytest.mark.parametrize(
    ("external_id", "user_id", "matched_by"),
    [
        (ALICE, ALICE, "id"),
        (ALICE.upper(), ALICE, "id"),
        (f"  {ALICE} ", ALICE, "id"),
        ("alice.a@school.org", ALICE, "email"),
        ("  ALICE.A@School.ORG\t", ALICE, "email"),
        ("b_b@school.org", BOB, "email"),
        ("bxb@school.org", None, None),  # `_` is not a wildcard the other way round either
        ("alice_a@school.org", None, None),  # the old ILIKE matched alice.a@school.org
        ("alice%@school.org", None, None),
        ("%", None, None),
        ("alice.a@school.org.evil", None, None),
        ("cccccccc-0000-4000-8000-000000000003", None, None),
        ("sanitized_id_0b050e9f", None, None),
        ("", None, None),
        ("   ", None, None),
        (None, None, None),
    ],
)
def test_external_learner_id_matches_by_id_then_exact_email(external_id, user_id, matched_by):
    match = match_user(external_id, USERS, EMAILS)
    assert (match.user_id, match.matched_by) == (user_id, matched_by)


def test_an_id_of_one_user_and_email_of_another_is_ambiguous_not_guessed():
    emails = {ALICE: [BOB]}  # Bob's email address is, absurdly, Alice's id
    match = match_user(ALICE, USERS, emails)
    assert (match.user_id, match.matched_by, set(match.candidates)) == (
        None,
        "ambiguous",
        {ALICE, BOB},
    )


@pytest.mark.parametrize(
    ("stored", "external_id"),
    [
        # Hardening item 9: emails that differ only by surrounding spaces, or by a capital
        # that only Unicode case-folding equates, name two users.
        (["jo@school.org", " jo@school.org "], "jo@school.org"),
        (["ÉLODIE@school.org", "élodie@school.org"], "Élodie@School.org"),
        (["STRASSE@school.org", "strasse@school.org"], "straße@school.org"),
    ],
)
def test_an_email_two_users_share_after_folding_is_ambiguous(stored, external_id):
    emails = user_ids_by_email([ALICE, BOB], stored)
    match = match_user(external_id, USERS, emails)
    assert (match.user_id, match.matched_by, set(match.candidates)) == (
        None,
        "ambiguous",
        {ALICE, BOB},
    )


def test_emails_fold_with_python_casefold_not_sql_lower():
    assert normalise_email("  İnci@School.org ") == normalise_email("i̇nci@school.org")
    assert normalise_email("STRASSE@x.org") == normalise_email("straße@x.org")


def test_users_without_an_email_are_matched_by_id_only():
    emails = user_ids_by_email([ALICE, BOB], [None, "  "])
    assert emails == {}
    assert match_user(ALICE, USERS, emails).user_id == ALICE


def test_forgotten_users_are_never_matched():
    from partners_dagster.steps.membership_matching import match_memberships

    memberships = pd.DataFrame(
        {
            "membership_uuid": ["m1", "m2"],
            "learner_uuid": ["l1", "l2"],
            "external_learner_id": [ALICE, "b_b@school.org"],
            "fetch_status": ["found", "found"],
            "error": [None, None],
        }
    )
    users = pd.DataFrame(
        {"id": [ALICE, BOB], "email": [None, "b_b@school.org"], "forgotten": [True, False]}
    )
    matches = match_memberships(memberships, users)
    assert matches.links.values.tolist() == [["m2", BOB, "email"]]
    assert matches.unmatched["membership_uuid"].tolist() == ["m1"]


# -- latest enrolment ------------------------------------------------------------------------

RUN_A = "0000000a-0000-4000-8000-000000000000"
RUN_B = "0000000b-0000-4000-8000-000000000000"
M1, M2 = "00000001-0000-4000-8000-000000000000", "00000002-0000-4000-8000-000000000000"


def _e(run, membership, activated, ratio, deactivated=None):
    return Enrolment(run, membership, activated, deactivated, ratio)


@pytest.mark.parametrize(
    ("enrolments", "expected"),
    [
        # later activation wins, whatever the ratio
        ([_e(RUN_A, M1, T0, 1.0), _e(RUN_B, M1, T0 + timedelta(days=1), 0.1)], 1),
        # across memberships of the same user
        ([_e(RUN_A, M1, T0 + timedelta(days=2), 0.2), _e(RUN_B, M2, T0, 0.9)], 0),
        # tie on activated_at: higher ratio
        ([_e(RUN_A, M1, T0, 0.3), _e(RUN_B, M2, T0, 0.7)], 1),
        ([_e(RUN_B, M1, T0, 0.7), _e(RUN_A, M2, T0, 0.3)], 0),
        # tie on activated_at and ratio: greater run UUID
        ([_e(RUN_B, M1, T0, 0.5), _e(RUN_A, M2, T0, 0.5)], 0),
        ([_e(RUN_A, M1, T0, 0.5), _e(RUN_B, M2, T0, 0.5)], 1),
        # a missing activated_at sorts oldest
        ([_e(RUN_B, M1, None, 1.0), _e(RUN_A, M1, T0 - timedelta(days=900), 0.0)], 1),
        ([_e(RUN_B, M1, None, 0.2), _e(RUN_A, M1, None, 0.4)], 1),
    ],
)
def test_latest_enrolment(enrolments, expected):
    assert latest_enrolment(enrolments) == enrolments[expected]
    frame = pd.DataFrame([e.__dict__ for e in enrolments]).assign(user_id=ALICE, course_uuid="c")
    chosen = pick_latest_enrolment_rows(frame).iloc[0]
    assert (chosen.run_uuid, chosen.membership_uuid) == (
        enrolments[expected].run_uuid,
        enrolments[expected].membership_uuid,
    )


enrolment_strategy = st.builds(
    Enrolment,
    run_uuid=st.sampled_from([RUN_A, RUN_B, "0000000c-0000-4000-8000-000000000000"]),
    membership_uuid=st.sampled_from([M1, M2]),
    activated_at=st.one_of(
        st.none(), st.sampled_from([T0, T0 + timedelta(seconds=1), T0 + timedelta(days=3)])
    ),
    deactivated_at=st.none(),
    steps_completed_ratio=st.sampled_from([0.0, 0.29, 0.5, 1.0]),
)


@given(st.lists(enrolment_strategy, min_size=1, max_size=8))
def test_the_frame_version_agrees_with_the_scalar_rule(enrolments):
    frame = pd.DataFrame([e.__dict__ for e in enrolments]).assign(user_id=ALICE, course_uuid="c")
    frame["activated_at"] = pd.to_datetime(frame["activated_at"], utc=True)
    chosen = pick_latest_enrolment_rows(frame).iloc[0]
    best = latest_enrolment(enrolments)
    assert (chosen.run_uuid, chosen.membership_uuid, chosen.steps_completed_ratio) == (
        best.run_uuid,
        best.membership_uuid,
        best.steps_completed_ratio,
    )


# -- the state machine ------------------------------------------------------------------------

E, P, C, D = State.ENROLLED, State.IN_PROGRESS, State.COMPLETE, State.DROPPED


@pytest.mark.parametrize(
    ("stored", "new", "deactivated", "expected"),
    [
        ((0, E), 0, False, (0, E, None)),
        ((0, E), 1, False, (1, P, E)),
        ((0, E), 59, False, (59, P, E)),
        ((0, E), 60, False, (60, C, E)),
        ((0, E), 100, False, (100, C, E)),
        ((30, P), 59, False, (59, P, None)),  # progress only
        ((30, P), 60, False, (60, C, P)),
        ((30, P), 10, False, (30, P, None)),  # never goes down
        ((30, P), 0, False, (30, P, None)),  # in_progress -> enrolled is not allowed
        ((0, E), 59, True, (59, D, E)),  # deactivated below 60 drops
        ((0, E), 60, True, (60, C, E)),  # deactivated at 60 completes
        ((45, P), 10, True, (45, D, P)),
        ((45, D), 10, True, (45, D, None)),  # already dropped: no new transition
        ((45, D), 0, False, (45, E, D)),  # a dropped learner on a new run at 0 comes back
        ((45, D), 50, False, (50, P, D)),
        ((45, D), 80, False, (80, C, D)),
        ((100, C), 10, False, (100, C, None)),  # complete never changes
        ((70, C), 0, True, (70, C, None)),
        ((60, C), 100, False, (60, C, None)),  # not even its progress
    ],
)
def test_state_machine(stored, new, deactivated, expected):
    outcome = next_achievement(stored[0], stored[1], new, deactivated)
    assert (outcome.progress, outcome.state, outcome.moved_from) == expected


updates = st.tuples(st.integers(0, 100), st.booleans())


@given(st.integers(0, 100), st.sampled_from(list(State)), st.lists(updates, max_size=12))
def test_any_sequence_never_lowers_progress_never_leaves_complete_and_is_idempotent(
    progress, state, sequence
):
    for new, deactivated in sequence:
        outcome = next_achievement(progress, state, new, deactivated)
        assert outcome.progress >= progress
        if state is State.COMPLETE:
            assert (outcome.progress, outcome.state) == (progress, state)
        if outcome.moved:
            assert outcome.state is not state
        again = next_achievement(outcome.progress, outcome.state, new, deactivated)
        assert (again.progress, again.state, again.moved) == (
            outcome.progress,
            outcome.state,
            False,
        )
        progress, state = outcome.progress, outcome.state


def test_transition_metadata():
    common = {"dagster_run_id": "run-1", "run_uuid": RUN_A, "membership_uuid": M1, "credit": 20.0}
    complete = transition_metadata(C, left_at=None, **common)
    assert complete == {
        "source": "partners_dagster",
        "dagster_run_id": "run-1",
        "future_learn_run_uuid": RUN_A,
        "future_learn_membership_uuid": M1,
        "credit": 20.0,
    }
    # The activity's credit as stored: the website's column is a nullable float.
    unset = transition_metadata(C, left_at=None, **(common | {"credit": None}))
    assert "credit" in unset and unset["credit"] is None
    dropped = transition_metadata(D, left_at=T0, **common)
    assert dropped["left_at"] == "2027-01-10T09:00:00+00:00" and "credit" not in dropped
    assert "credit" not in transition_metadata(P, left_at=None, **common)


# -- a new achievement's programme ------------------------------------------------------------

PRIMARY, SECONDARY = "p1", "p2"


@pytest.mark.parametrize(
    ("programmes", "enrolments", "expected"),
    [
        ([], [], None),
        ([PRIMARY], [], PRIMARY),  # the only programme, enrolled or not
        ([PRIMARY, SECONDARY], [], None),
        ([PRIMARY, SECONDARY], [ProgrammeEnrolment(SECONDARY, T0)], SECONDARY),
        (
            [PRIMARY, SECONDARY],
            [ProgrammeEnrolment(PRIMARY, T0), ProgrammeEnrolment(SECONDARY, T0 + timedelta(1))],
            SECONDARY,
        ),
        (
            [PRIMARY, SECONDARY],
            [
                ProgrammeEnrolment(PRIMARY, T0),
                ProgrammeEnrolment(SECONDARY, T0 + timedelta(1), "unenrolled"),
            ],
            PRIMARY,
        ),
        ([PRIMARY, SECONDARY], [ProgrammeEnrolment("other", T0 + timedelta(5))], None),
    ],
)
def test_programme_of_a_new_achievement(programmes, enrolments, expected):
    assert programme_for_new_achievement(programmes, enrolments) == expected


# -- follow-up jobs ---------------------------------------------------------------------------

PROGRAMMES = {
    "primary-certificate": Programme(
        "p-1", "primary-certificate", "Programmes::PrimaryCertificate"
    ),
    "secondary-certificate": Programme("p-2", "secondary-certificate", None),
    "cs-accelerator": Programme("p-3", "cs-accelerator", "Programmes::CSAccelerator"),
    "i-belong": Programme("p-4", "i-belong", None),
}


def _completion(slug, category=None):
    return completion_jobs(
        programme=PROGRAMMES.get(slug),
        category=category,
        user_id=ALICE,
        activity_id="act-1",
        achievement_id="ach-1",
        now=T0,
        globalid_app="teach-computing",
    )


@pytest.mark.parametrize(
    ("slug", "gid"),
    [
        ("primary-certificate", "gid://teach-computing/Programmes::PrimaryCertificate/p-1"),
        ("secondary-certificate", "gid://teach-computing/Programme/p-2"),  # type is null
    ],
)
def test_certificate_completion_queues_a_pending_transition_job_with_the_programme(slug, gid):
    jobs = {job.job_class: job for job in _completion(slug)}
    job = jobs["CertificatePendingTransitionJob"]
    assert job.arguments == [
        {"_aj_globalid": gid},
        ALICE,
        {"source": "partners_dagster", "_aj_ruby2_keywords": ["source"]},
    ]
    assert job.run_at == T0 + timedelta(minutes=1)
    assert job.dedup_key == "CertificatePendingTransitionJob:ach-1:complete"


def test_every_completion_queues_a_badge_and_next_steps_and_the_programme_its_own():
    table = {
        slug: sorted((j.job_class, j.run_at - T0) for j in _completion(slug))
        for slug in [None, "i-belong", "cs-accelerator", "primary-certificate"]
    }
    badge = ("IssueBadgeJob", timedelta(minutes=2))
    next_steps = ("CSAccelerator::CheckNextStepsJob", timedelta(days=2))
    assert table[None] == table["i-belong"] == sorted([badge, next_steps])
    assert table["cs-accelerator"] == sorted(
        [("AssessmentEligibilityJob", timedelta(0)), badge, next_steps]
    )
    assert table["primary-certificate"] == sorted(
        [("CertificatePendingTransitionJob", timedelta(minutes=1)), badge, next_steps]
    )
    args = {j.job_class: j.arguments for j in _completion("cs-accelerator")}
    assert args["AssessmentEligibilityJob"] == [ALICE]
    assert args["IssueBadgeJob"] == args["CSAccelerator::CheckNextStepsJob"] == ["ach-1"]


@pytest.mark.parametrize(
    ("category", "emailed"), [("face-to-face", True), ("online", True), (None, False), ("x", False)]
)
def test_a_completion_email_for_face_to_face_and_online_activities(category, emailed):
    jobs = {j.job_class: j for j in _completion(None, category)}
    assert ("CompleteAchievementEmailJob" in jobs) is emailed
    if emailed:
        assert jobs["CompleteAchievementEmailJob"].arguments == [ALICE, "act-1"]
        assert jobs["CompleteAchievementEmailJob"].run_at == T0


@pytest.mark.parametrize(
    ("slug", "has_csa_enrolment", "queued"),
    [("cs-accelerator", False, True), ("cs-accelerator", True, False), ("i-belong", False, False)],
)
def test_auto_enrol_is_for_csa_achievements_of_users_without_a_csa_enrolment(
    slug, has_csa_enrolment, queued
):
    job = auto_enrol_job(
        programme=PROGRAMMES[slug],
        achievement_id="ach-9",
        user_id=ALICE,
        has_csa_enrolment=has_csa_enrolment,
        now=T0,
    )
    assert (job is not None) is queued
    if queued:
        # perform_later(achievement_id: ...): a keyword, once per achievement per night.
        assert job.arguments == [
            {"achievement_id": "ach-9", "_aj_ruby2_keywords": ["achievement_id"]}
        ]
        assert job.dedup_key == "CSAccelerator::AutoEnrolJob:ach-9:2027-01-10"
