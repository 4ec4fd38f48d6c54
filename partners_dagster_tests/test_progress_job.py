"""Step 2 on real parts, as the old jobs' specification and against an independent model."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from .harness import PROGRAMME_TYPES, Night, Scenario, check_results, materialization_metadata

# -- the old jobs' specification, as behaviour -----------------------------------------------


@pytest.fixture
def scenario():
    s = Scenario()
    s.course("python", programmes=("primary-certificate",), credit=20)
    s.course("networks", programmes=("cs-accelerator",))
    s.course("algorithms", programmes=("primary-certificate", "secondary-certificate"))
    s.course("plain")
    s.run("python-1", "python")
    s.run("python-2", "python")
    s.run("networks-1", "networks")
    s.run("algorithms-1", "algorithms")
    s.run("plain-1", "plain")
    s.run("plain-2", "plain")
    return s


def _achievement(night: Night, scenario: Scenario, user: str, course: str) -> dict:
    rows = night.query(
        "SELECT id, progress, current_state, programme_id FROM achievements_with_state "
        f"WHERE user_id = '{scenario.id('user', user)}' AND activity_id = '{scenario.id('activity', course)}'"
    )
    assert len(rows) <= 1
    return rows.iloc[0].to_dict() if len(rows) else {}


def _transitions(night: Night, achievement_id: str) -> list[tuple]:
    rows = night.query(
        f"SELECT from_state, to_state FROM transitions_with_from WHERE achievement_id = '{achievement_id}' ORDER BY sort_key"
    )
    return list(rows.itertuples(index=False, name=None))


def _jobs(night: Night) -> pd.DataFrame:
    return night.query(
        "SELECT job_class, arguments, dedup_key FROM partners_dagster_outbox ORDER BY id"
    )


def _member_by_id(scenario, name: str) -> str:
    """The user ``name``, with the membership ``name-m`` naming them by their id."""
    user_id = scenario.user(name)
    scenario.membership(f"{name}-m", user_id)
    return user_id


@pytest.fixture
def run_nights(scenario, tmp_path):
    nights = []

    def start() -> Night:
        # No response cache: each night sees the scenario's current data.
        night = Night(scenario.build(), tmp_path / f"n{len(nights)}", cache=False)
        nights.append(night)
        night.both_steps()
        return night

    for path in [tmp_path / f"n{i}" for i in range(3)]:
        path.mkdir()
    yield start
    for night in nights:
        night.close()


def test_a_user_on_two_runs_gets_the_later_runs_progress(scenario, run_nights):
    _member_by_id(scenario, "ann")
    scenario.enrol("python-1", "ann-m", "2027-01-05T10:00:00", 0.9)
    scenario.enrol("python-2", "ann-m", "2027-03-01T10:00:00", 0.29)
    night = run_nights()
    assert _achievement(night, scenario, "ann", "python") | {"id": None} == {
        "id": None,
        "progress": 29,
        "current_state": "in_progress",
        "programme_id": scenario.id("programme", "primary-certificate"),
    }


def test_two_memberships_take_the_later_enrolment_across_both_and_update_once(scenario, run_nights):
    u = scenario.user("bea", "Bea.Jones@school.example.org")
    scenario.membership("bea-by-id", u)
    scenario.membership("bea-by-email", "  BEA.JONES@SCHOOL.EXAMPLE.ORG ")
    scenario.enrol("plain-1", "bea-by-id", "2027-01-05T10:00:00", 0.58)
    scenario.enrol("plain-2", "bea-by-email", "2027-02-05T10:00:00", 0.3)
    night = run_nights()
    achievement = _achievement(night, scenario, "bea", "plain")
    assert (achievement["progress"], achievement["current_state"]) == (30, "in_progress")
    assert _transitions(night, achievement["id"]) == [("enrolled", "in_progress")]
    assert (
        night.query("SELECT count(*) AS n FROM partners_dagster_membership_links")["n"].iat[0] == 2
    )


def test_exact_progress_and_a_complete_achievement_is_never_touched(scenario, run_nights):
    _member_by_id(scenario, "cal")
    scenario.enrol("plain-1", "cal-m", "2027-01-05T10:00:00", 0.6)
    night = run_nights()
    achievement = _achievement(night, scenario, "cal", "plain")
    assert (achievement["progress"], achievement["current_state"]) == (60, "complete")
    # A later enrolment with a lower ratio, and then leaving it: nothing changes.
    scenario.enrol("plain-2", "cal-m", "2027-04-05T10:00:00", 0.1, left="2027-04-20T10:00:00")
    scenario.rebuild_enrolments(night.dataset)
    second = night.run("update_progress_job")
    assert _achievement(night, scenario, "cal", "plain") == achievement
    assert _transitions(night, achievement["id"]) == [("enrolled", "complete")]
    assert materialization_metadata(second, "achievement_progress")["skipped_because_complete"] == 1


@pytest.mark.parametrize(
    "slug_course", [("primary-certificate", "python"), ("secondary-certificate", "algorithms")]
)
def test_a_certificate_completion_queues_one_pending_transition_job(
    scenario, run_nights, slug_course
):
    slug, course = slug_course
    u = scenario.user("dan")
    # python's only programme is primary, whatever the user is on; algorithms has two, and
    # the user's most recent one (secondary) wins.
    scenario.on_programme("dan", "primary-certificate", "2026-01-01")
    scenario.on_programme("dan", "secondary-certificate", "2026-06-01")
    scenario.membership("dan-m", u)
    scenario.enrol(f"{course}-1", "dan-m", "2027-01-05T10:00:00", 1.0)
    night = run_nights()
    jobs = _jobs(night)
    achievement = _achievement(night, scenario, "dan", course)
    assert jobs["job_class"].tolist() == [
        "CertificatePendingTransitionJob",
        "IssueBadgeJob",
        "CSAccelerator::CheckNextStepsJob",
    ]
    import json

    arguments = [json.loads(a) if isinstance(a, str) else a for a in jobs["arguments"]]
    programme_class = PROGRAMME_TYPES[slug]
    programme_id = scenario.id("programme", slug)
    # As ActiveJob 6.1 serializes perform_later(programme, user_id, source: ...): the
    # Programme as a GlobalID, the keyword hash marked as keywords.
    assert arguments[0] == [
        {"_aj_globalid": f"gid://teach-computing/{programme_class}/{programme_id}"},
        u,
        {"source": "partners_dagster", "_aj_ruby2_keywords": ["source"]},
    ]
    assert arguments[1] == arguments[2] == [achievement["id"]]
    metadata = night.query(
        f"SELECT metadata FROM transitions_with_from WHERE achievement_id = '{achievement['id']}'"
    )
    recorded = json.loads(metadata["metadata"].iat[0])
    assert recorded["credit"] == (20.0 if course == "python" else 10.0)
    assert recorded["future_learn_run_uuid"] == scenario.id("run", f"{course}-1")
    assert recorded["future_learn_membership_uuid"] == scenario.id("membership", "dan-m")
    night.run("update_progress_job")
    assert len(_jobs(night)) == 3  # each queued once


def test_a_cs_accelerator_completion_queues_one_assessment_eligibility_job(scenario, run_nights):
    u = _member_by_id(scenario, "eve")
    scenario.enrol("networks-1", "eve-m", "2027-01-05T10:00:00", 0.75)
    night = run_nights()
    jobs = _jobs(night)
    assert sorted(jobs["job_class"]) == [
        "AssessmentEligibilityJob",
        "CSAccelerator::AutoEnrolJob",  # created, and eve has no CS Accelerator enrolment
        "CSAccelerator::CheckNextStepsJob",
        "IssueBadgeJob",
    ]
    by_class = dict(zip(jobs["job_class"], jobs["arguments"], strict=True))
    assert u in str(by_class["AssessmentEligibilityJob"])


def test_deactivated_below_60_drops_and_a_new_run_brings_the_learner_back(scenario, run_nights):
    _member_by_id(scenario, "fay")
    scenario.enrol("plain-1", "fay-m", "2027-01-05T10:00:00", 0.59, left="2027-02-01T08:00:00")
    night = run_nights()
    achievement = _achievement(night, scenario, "fay", "plain")
    assert (achievement["progress"], achievement["current_state"]) == (59, "dropped")
    scenario.enrol("plain-2", "fay-m", "2027-05-05T10:00:00", 0.0)
    scenario.rebuild_enrolments(night.dataset)
    night.run("update_progress_job")
    back = _achievement(night, scenario, "fay", "plain")
    assert (back["progress"], back["current_state"]) == (59, "enrolled")
    assert _transitions(night, achievement["id"]) == [
        ("enrolled", "dropped"),
        ("dropped", "enrolled"),
    ]
    most_recent = night.query(
        f"SELECT to_state FROM transitions_with_from WHERE achievement_id = '{achievement['id']}' AND most_recent"
    )
    assert most_recent["to_state"].tolist() == ["enrolled"]


def test_deactivated_at_60_completes(scenario, run_nights):
    _member_by_id(scenario, "gus")
    scenario.enrol("plain-1", "gus-m", "2027-01-05T10:00:00", 0.6, left="2027-02-01T08:00:00")
    night = run_nights()
    assert _achievement(night, scenario, "gus", "plain")["current_state"] == "complete"


def test_a_course_with_an_unreadable_run_is_left_untouched(scenario, run_nights):
    from partners_dagster.sandbox import Faults

    _member_by_id(scenario, "hal")
    scenario.enrol("python-1", "hal-m", "2027-01-05T10:00:00", 0.2)
    scenario.enrol("plain-1", "hal-m", "2027-01-05T10:00:00", 0.2)
    night = run_nights()
    before = _achievement(night, scenario, "hal", "python")
    scenario.enrol("python-2", "hal-m", "2027-02-05T10:00:00", 0.5)
    scenario.enrol("plain-2", "hal-m", "2027-02-05T10:00:00", 0.5)
    scenario.rebuild_enrolments(night.dataset)
    night.api.faults = Faults(failing_runs=[scenario.id("run", "python-1")])
    result = night.run("update_progress_job")
    assert _achievement(night, scenario, "hal", "python") == before
    assert _achievement(night, scenario, "hal", "plain")["progress"] == 50
    progress = materialization_metadata(result, "achievement_progress")
    assert progress["courses_skipped"] == 1
    assert scenario.id("course", "python") in progress["skipped_courses"]


# -- against an independent computation on the tiny sandbox ------------------------------------


def independent_expectation(dataset) -> pd.DataFrame:
    """What every achievement must be after the first night, computed from the dataset alone."""
    users = dataset.users.reset_index(drop=True)
    memberships = dataset.memberships
    user_of_membership = {}
    for row in memberships.itertuples():
        if row.kind in ("user_id", "email", "email_other_case"):
            user_of_membership[row.Index] = users["id"].iat[row.learner]
    runs = dataset.runs.reset_index(drop=True)
    activity_of_course = dict(
        zip(dataset.activities["future_learn_course_uuid"], dataset.activities["id"], strict=True)
    )
    best: dict[tuple[str, str], tuple] = {}
    known_on_reports = set()
    for e in dataset.enrolments.itertuples():
        course = runs["course_uuid"].iat[e.run]
        if course not in activity_of_course:
            continue
        known_on_reports.add(e.membership)
        user = user_of_membership.get(e.membership)
        if user is None:
            continue
        key = (
            e.activated_at,
            e.steps_completed_ratio,
            runs["run_uuid"].iat[e.run],
            memberships["membership_uuid"].iat[e.membership],
        )
        current = best.get((user, course))
        if current is None or key > current[0]:
            best[(user, course)] = (key, e)
    rows = []
    for (user, course), (_, e) in best.items():
        progress = int(Decimal(repr(e.steps_completed_ratio)) * 100)
        if e.deactivated and progress < 60:
            state = "dropped"
        elif progress == 0:
            state = "enrolled"
        elif progress < 60:
            state = "in_progress"
        else:
            state = "complete"
        rows.append((user, activity_of_course[course], progress, state))
    return pd.DataFrame(rows, columns=["user_id", "activity_id", "progress", "current_state"])


def test_every_achievement_matches_an_independent_computation(tiny_dataset, tmp_path):
    night = Night(tiny_dataset, tmp_path)
    try:
        first, second = night.both_steps()
        stored = night.query(
            "SELECT user_id, activity_id, progress, current_state FROM achievements_with_state"
        )
        expected = independent_expectation(tiny_dataset)
        key = ["user_id", "activity_id"]
        pd.testing.assert_frame_equal(
            stored.sort_values(key, ignore_index=True),
            expected.sort_values(key, ignore_index=True),
            check_dtype=False,
        )
        assert set(expected["current_state"]) == {"enrolled", "in_progress", "complete", "dropped"}
        assert check_results(second)["progress_never_decreases"] is True

        # Within the cache expiry, step 2 makes no network request at all.
        assert sum(night.api.requests.values()) > 0
        night.api.requests.clear()
        tables = {
            t: night.query(f"SELECT * FROM {t}")
            for t in ("achievements", "achievement_transitions", "partners_dagster_outbox", "users")
        }
        again = night.run("update_progress_job")
        assert sum(night.api.requests.values()) == 0
        # ... and running the night twice changes nothing the second time.
        for table, before in tables.items():
            assert night.query(f"SELECT * FROM {table}").equals(before), table
        progress = materialization_metadata(again, "achievement_progress")
        assert progress["achievements_created"] == progress["achievements_progressed"] == 0
        assert progress["follow_up_jobs_queued"] == 0
    finally:
        night.close()


def test_one_asset_alone_rebuilds_its_upstream_values_without_asking_the_api(night):
    # Asset values are never pickled: a run of latest_enrolments alone rebuilds course_runs
    # and course_enrolments from the response cache and the database.
    import dagster as dg

    _, progress = night.both_steps()
    expected = materialization_metadata(progress, "latest_enrolments")["latest_enrolments"]
    night.api.requests.clear()
    alone = night.defs.resolve_job_def("update_progress_job").execute_in_process(
        instance=night.instance, asset_selection=[dg.AssetKey("latest_enrolments")]
    )
    assert alone.success
    assert materialization_metadata(alone, "latest_enrolments")["latest_enrolments"] == expected
    assert sum(night.api.requests.values()) == 0
    stored = [p.name for p in Path(night.instance.root_directory).rglob("*") if p.is_file()]
    assert stored and not {"course_runs", "course_enrolments", "latest_enrolments"} & set(stored)
