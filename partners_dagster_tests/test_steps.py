"""The middle layer: each step function on frames of a few rows, and step 2's unit of work
on a temporary SQLite database. No Dagster, no night: a one-line change to a step is tested
here in seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partners_dagster.partners_api import CourseRun, Rejection
from partners_dagster.rules import State, next_achievement
from partners_dagster.sidekiq.follow_up_jobs import Programme, auto_enrol_job
from partners_dagster.steps.course_progress import CourseFacts, plan_course_progress
from partners_dagster.steps.course_reports import (
    ENROLMENT_COLUMNS,
    CourseEnrolments,
    course_runs_frame,
    spoiled_by_malformed_runs,
    unknown_courses,
)
from partners_dagster.steps.latest_enrolment import select_latest_enrolments
from partners_dagster.steps.membership_matching import match_memberships, plan_membership_lookups

NOW = datetime(2027, 1, 12, 2, 0, tzinfo=UTC)
C1, C2, C3 = (f"c{i}c{i}c{i}c{i}-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
R1, R2, R3, R4 = (f"a{i}a{i}a{i}a{i}-0000-4000-8000-00000000000{i}" for i in (1, 2, 3, 4))
M1, M2, M3 = (f"b{i}b{i}b{i}b{i}-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
U1, U2, U3 = (f"d{i}d{i}d{i}d{i}-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
A1, A2 = (f"e{i}e{i}e{i}e{i}-0000-4000-8000-00000000000{i}" for i in (1, 2))


def run(uuid: str, course: str, title: str = "A course") -> CourseRun:
    return CourseRun(uuid, f"/runs/{uuid}", title, None, None, NOW, 3, course, f"/c/{course}")


# -- course runs ------------------------------------------------------------------------------


def test_runs_frame_marks_known_ignored_and_malformed_runs():
    runs = [run(R1, C1), run(R2, C2, "Unknown one"), run(R3, C3, "Ignored one")]
    frame = course_runs_frame(
        runs, known_course_uuids=[C1], ignored=[C3], rejections=[Rejection(3, C1, "no title")]
    )
    assert frame[["run_uuid", "course_uuid", "known", "ignored"]].values.tolist() == [
        [R1, C1, True, False],
        [R2, C2, False, False],
        [R3, C3, False, True],
        [None, C1, True, False],
    ]
    assert frame["malformed"].tolist()[3] == "no title"
    unknown = unknown_courses(frame)
    assert unknown[["course_uuid", "title", "runs"]].values.tolist() == [[C2, "Unknown one", 1]]


@pytest.mark.parametrize(
    ("rejection_key", "spoiled"),
    [(C1, {C1}), (None, {C1, C2}), (C3, set())],  # None: it could be any known course
)
def test_a_malformed_run_record_spoils_its_known_course_or_every_one(rejection_key, spoiled):
    frame = course_runs_frame(
        [run(R1, C1), run(R2, C2)], [C1, C2], [], rejections=[Rejection(2, rejection_key, "bad")]
    )
    assert {course for _, course, _ in spoiled_by_malformed_runs(frame)} == spoiled


# -- memberships ------------------------------------------------------------------------------


def _memberships(rows):
    return pd.DataFrame(
        rows,
        columns=["membership_uuid", "learner_uuid", "external_learner_id", "fetch_status", "error"],
    )


def test_membership_matching_table():
    users = pd.DataFrame(
        {
            "id": [U1, U2, U3],
            "email": ["Jo@School.org", None, "gone@school.org"],
            "forgotten": [False, False, True],
        }
    )
    memberships = _memberships(
        [
            (M1, "l1", "  jo@SCHOOL.org ", "found", None),  # email, folded
            (M2, "l2", U2.upper(), "found", None),  # id, no email needed
            (M3, "l3", "gone@school.org", "found", None),  # forgotten: never matched
            ("m4", None, None, "not_found", None),
        ]
    )
    matches = match_memberships(memberships, users)
    assert matches.links.values.tolist() == [[M1, U1, "email"], [M2, U2, "id"]]
    assert matches.unmatched["membership_uuid"].tolist() == [M3]
    assert matches.ambiguous.empty


def test_lookup_plan_fetches_the_new_and_the_due_and_remembers_the_rest():
    enrolments = pd.DataFrame({"membership_uuid": [M1, M1, M2, M3, "linked"]})
    linked = pd.DataFrame({"membership_uuid": ["linked"], "user_id": [U1]})
    lookups = pd.DataFrame(
        {
            "membership_uuid": [M2, M3],
            "status": ["not_found", "found"],
            "learner_uuid": [None, "l3"],
            "external_learner_id": [None, "x@school.org"],
            "fetched_at": [NOW - timedelta(days=1), NOW - timedelta(days=30)],
            "first_fetched_at": [NOW - timedelta(days=40), NOW - timedelta(days=40)],
        }
    )
    plan = plan_membership_lookups(enrolments, linked, lookups, now=NOW, refresh_days=7)
    assert (plan.on_reports, plan.already_linked, plan.never_looked_up) == (4, 1, 1)
    assert plan.to_fetch == [M1, M3]  # never looked up; due (30 days > 7)
    assert plan.remembered[["membership_uuid", "fetch_status"]].values.tolist() == [
        [M2, "not_found"]
    ]
    every_night = plan_membership_lookups(enrolments, linked, lookups, now=NOW, refresh_days=0)
    assert every_night.to_fetch == [M1, M2, M3] and every_night.remembered.empty


# -- latest enrolment and the plan of a course ------------------------------------------------


def _enrolments(rows) -> CourseEnrolments:
    frame = pd.DataFrame(rows, columns=[*ENROLMENT_COLUMNS, "course_uuid"])
    for column in ("activated_at", "deactivated_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return CourseEnrolments(
        enrolments=frame,
        failed_runs=pd.DataFrame(columns=["run_uuid", "course_uuid", "error"]),
        rejections=pd.DataFrame(columns=["run_uuid", "course_uuid", "index", "key", "reason"]),
        runs_fetched=2,
    )


def test_latest_enrolment_across_runs_and_memberships_of_linked_users():
    enrolments = _enrolments(
        [
            (R1, M1, "active", "2027-01-01", None, 50, 0.5, C1),
            (R2, M2, "active", "2027-02-01", None, 29, 0.29, C1),  # later: wins, though lower
            (R3, M3, "active", "2027-03-01", None, 90, 0.9, C1),  # nobody holds M3
            (R4, M1, "active", None, None, 100, 1.0, C2),  # C2 is not known
        ]
    )
    links = pd.DataFrame({"membership_uuid": [M1, M2], "user_id": [U1, U1]})
    activities = pd.DataFrame({"activity_id": [A1], "course_uuid": [C1]})
    result = select_latest_enrolments(enrolments, links, activities)
    assert result.latest[["user_id", "activity_id", "run_uuid", "progress"]].values.tolist() == [
        [U1, A1, R2, 29]
    ]
    assert result.unlinked_enrolments == 1


def _facts(**overrides) -> CourseFacts:
    values = {
        "activity_id": A1,
        "credit": None,
        "category": "online",
        "programmes": {"p": Programme("p", "cs-accelerator", "Programmes::CSAccelerator")},
        "users_with_csa_enrolment": {U2},
        "globalid_app": "teach-computing",
        "dagster_run_id": "run-1",
        "now": NOW,
    }
    return CourseFacts(**(values | overrides))


def test_course_plan_table():
    latest = pd.DataFrame(
        {
            "user_id": [U1, U2, U3],
            "run_uuid": [R1, R1, R1],
            "membership_uuid": [M1, M2, M3],
            "deactivated_at": [pd.NaT, pd.NaT, pd.NaT],
            "progress": [75, 10, 40],
        }
    )
    stored = pd.DataFrame(
        {
            "id": ["ach-1", "ach-2", "ach-3"],
            "user_id": [U1, U2, U3],
            "progress": [20, 30, 100],
            "programme_id": ["p", "p", None],
            "state": ["in_progress", "in_progress", "complete"],  # ach-3 self-certified
            "last_sort_key": [10, 10, 0],
        }
    )
    plan = plan_course_progress(latest, stored, _facts())
    assert plan.updates == [{"id": "ach-1", "progress": 75, "updated_at": NOW}]
    (moved,) = plan.transitions
    assert (moved["achievement_id"], moved["to_state"], moved["sort_key"]) == (
        "ach-1",
        "complete",
        20,
    )
    assert moved["metadata"]["credit"] is None and moved["created_at"] == moved["updated_at"] == NOW
    assert sorted(job.job_class for job in plan.jobs) == [
        "AssessmentEligibilityJob",
        "CSAccelerator::AutoEnrolJob",  # changed, and U1 has no CS Accelerator enrolment
        "CSAccelerator::CheckNextStepsJob",
        "CompleteAchievementEmailJob",  # an online activity
        "IssueBadgeJob",
    ]
    assert plan.counts == {
        "progressed": 1,
        "moved_to_complete": 1,
        "unchanged": 1,
        "skipped_complete": 1,
    }


_ACHIEVEMENT_ROW = st.tuples(
    st.integers(0, 100),  # stored progress
    st.sampled_from(list(State)),
    st.integers(0, 100),  # the latest enrolment's progress
    st.booleans(),  # deactivated
    st.booleans(),  # created tonight
    st.sampled_from(["p", None]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ACHIEVEMENT_ROW, max_size=40))
def test_course_plan_applies_the_rule_to_every_row_as_one_row_at_a_time_would(rows):
    """The planner runs ``next_achievement`` once per distinct input, not once a row; its
    plan must be the one a row-by-row reading of the same rule gives, jobs in row order."""
    users = [f"d0d0d0d0-0000-4000-8000-{i:012d}" for i in range(len(rows))]
    latest = pd.DataFrame(
        {
            "user_id": users,
            "run_uuid": R1,
            "membership_uuid": M1,
            "deactivated_at": [NOW if r[3] else pd.NaT for r in rows],
            "progress": [r[2] for r in rows],
        }
    )
    stored = pd.DataFrame(
        {
            "id": [f"ach-{i}" for i in range(len(rows))],
            "user_id": users,
            "progress": [r[0] for r in rows],
            "programme_id": [r[5] for r in rows],
            "state": [str(r[1]) for r in rows],
            "last_sort_key": 10,
        }
    )
    created = [f"ach-{i}" for i, r in enumerate(rows) if r[4]]
    plan = plan_course_progress(latest, stored, _facts(), created)

    updates, moves, jobs, unchanged = [], [], [], 0
    for i, (progress, state, new, deactivated, is_new, programme_id) in enumerate(rows):
        if state is State.COMPLETE:
            continue
        outcome = next_achievement(progress, state, new, deactivated)
        changed = outcome.progress != progress or outcome.moved
        if changed or is_new:
            job = auto_enrol_job(
                programme=_facts().programmes.get(programme_id) if programme_id else None,
                achievement_id=f"ach-{i}",
                user_id=users[i],
                has_csa_enrolment=False,
                now=NOW,
            )
            jobs += [job.dedup_key] if job else []
        unchanged += not changed
        if changed:
            updates.append((f"ach-{i}", outcome.progress))
        if outcome.moved:
            moves.append((f"ach-{i}", str(outcome.state), 20))
    assert [(u["id"], u["progress"]) for u in plan.updates] == updates
    assert [(t["achievement_id"], t["to_state"], t["sort_key"]) for t in plan.transitions] == moves
    auto_enrol = [j.dedup_key for j in plan.jobs if j.job_class == "CSAccelerator::AutoEnrolJob"]
    assert auto_enrol == jobs
    assert plan.counts["unchanged"] == unchanged
    assert plan.counts["skipped_complete"] == sum(r[1] is State.COMPLETE for r in rows)


# -- step 2's unit of work on a temporary repository ------------------------------------------


def test_update_achievement_progress_on_a_temporary_repository(tmp_path):
    from partners_dagster.steps.latest_enrolment import LatestEnrolmentSet
    from partners_dagster.steps.progress_update import update_achievement_progress
    from partners_dagster.teachcomputing.engine import make_engine
    from partners_dagster.teachcomputing.migrate import upgrade
    from partners_dagster.teachcomputing.models import Activity, ProgrammeActivity, User
    from partners_dagster.teachcomputing.models import Programme as ProgrammeRow
    from partners_dagster.teachcomputing.repository import TeachComputingRepository
    from partners_dagster.teachcomputing.schema import create_teachcomputing_tables

    engine = make_engine(f"sqlite:///{tmp_path / 'tc.sqlite3'}")
    create_teachcomputing_tables(engine)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            User.__table__.insert(),
            [
                {
                    "id": U1,
                    "email": "a@x.org",
                    "forgotten": False,
                    "created_at": NOW,
                    "updated_at": NOW,
                },
                {"id": U2, "email": None, "forgotten": True, "created_at": NOW, "updated_at": NOW},
            ],
        )
        connection.execute(
            Activity.__table__.insert(),
            [
                {
                    "id": A1,
                    "future_learn_course_uuid": C1.upper(),
                    "credit": 12.5,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            ],
        )
        connection.execute(
            ProgrammeRow.__table__.insert(),
            [
                {
                    "id": "f1f1f1f1-0000-4000-8000-000000000001",
                    "slug": "primary-certificate",
                    "type": None,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            ],
        )
        connection.execute(
            ProgrammeActivity.__table__.insert(),
            [
                {
                    "id": "f2f2f2f2-0000-4000-8000-000000000001",
                    "programme_id": "f1f1f1f1-0000-4000-8000-000000000001",
                    "activity_id": A1,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            ],
        )
    latest = LatestEnrolmentSet(
        latest=pd.DataFrame(
            {
                "user_id": [U1, U2],
                "course_uuid": [C1, C1],
                "activity_id": [A1, A1],
                "run_uuid": [R1, R1],
                "membership_uuid": [M1, M2],
                "activated_at": [NOW, NOW],
                "deactivated_at": [pd.NaT, pd.NaT],
                "steps_completed_ratio": [0.6, 0.6],
                "progress": [60, 60],
            }
        ),
        skipped_courses=pd.DataFrame(columns=["course_uuid", "reason"]),
        unlinked_enrolments=0,
    )
    repository = TeachComputingRepository(engine)
    counts = update_achievement_progress(
        repository, latest, dagster_run_id="run-1", globalid_app="tc", now=NOW
    )
    assert (counts.achievements_created, counts.moved_to_complete, counts.skipped_forgotten) == (
        1,
        1,
        1,
    )
    assert counts.follow_up_jobs == 3 and counts.never_decreased
    again = update_achievement_progress(
        repository, latest, dagster_run_id="run-2", globalid_app="tc", now=NOW
    )
    assert (again.achievements_created, again.follow_up_jobs, again.skipped_complete) == (0, 0, 1)
    engine.dispose()
