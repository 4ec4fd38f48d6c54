"""Rules of a teacher's and a report's lifecycle (issue 21, items 1, 3, 4, 8, 11, 12), each on
real parts: the sandbox over HTTP, a real database, real Dagster runs."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from partners_dagster.rules import report_shrank
from partners_dagster.tools.unmatched import unmatched_memberships

from .harness import Night, Scenario, check_results, materialization_metadata

# -- a shrinking report counts as not read whole ------------------------------------------------


@pytest.mark.parametrize(
    ("remembered", "now", "shrank"),
    [
        (None, 0, False),  # never read: any size is accepted
        (0, 0, False),
        (10, 0, True),  # empty when the last was not
        (10, 4, True),  # under half
        (10, 5, False),  # half is not under half
        (3, 1, True),
        (10, 30, False),
    ],
)
def test_shrinking_report_rule(remembered, now, shrank):
    assert report_shrank(remembered, now) is shrank


def _plain_course(*runs: str) -> Scenario:
    """A scenario with the known course ``plain`` and its ``runs``."""
    s = Scenario()
    s.course("plain")
    for run in runs:
        s.run(run, "plain")
    return s


def _state(night: Night, scenario: Scenario, user: str, course: str) -> tuple[int, str]:
    row = night.query(
        "SELECT progress, current_state FROM achievements_with_state "
        f"WHERE user_id = '{scenario.id('user', user)}' "
        f"AND activity_id = '{scenario.id('activity', course)}'"
    )
    return int(row.at[0, "progress"]), row.at[0, "current_state"]


def test_a_shrinking_report_leaves_its_course_untouched_until_its_size_is_accepted(
    tmp_path, empty_database_url
):
    s = _plain_course("plain-1", "plain-2")
    s.user("ida")
    s.membership("ida-m", s.id("user", "ida"))
    s.enrol("plain-1", "ida-m", "2027-01-05T10:00:00", 0.1, left="2027-01-20T10:00:00")
    s.enrol("plain-2", "ida-m", "2027-03-05T10:00:00", 0.4)
    for n in range(4):  # others on the newest run: a report of five
        s.membership(f"other-{n}", f"nobody-{n}@school.example.org")
        s.enrol("plain-2", f"other-{n}", "2027-03-05T10:00:00", 0.2)
    night = Night(s.build(), tmp_path, database_url=empty_database_url, cache=False)
    try:
        night.both_steps()
        assert _state(night, s, "ida", "plain") == (40, "in_progress")
        # A glitch: the newest run's report comes back empty. Without the rule the older,
        # abandoned enrolment is the latest and the learner is dropped.
        s.enrolments = [e for e in s.enrolments if e["run"] != "plain-2"]
        s.rebuild_enrolments(night.dataset)
        result = night.run("update_progress_job")
        assert _state(night, s, "ida", "plain") == (40, "in_progress")
        enrolments = materialization_metadata(result, "course_enrolments")
        assert enrolments["reports_shrunk"] == 1
        assert check_results(result)["all_runs_fetched"] is False
        latest = materialization_metadata(result, "latest_enrolments")
        assert "report shrank" in latest["skipped_courses"]
        # It stays untouched night after night, until an operator accepts the new size.
        night.run("update_progress_job")
        assert _state(night, s, "ida", "plain") == (40, "in_progress")
        accept = {
            "resources": {
                "run_options": {"config": {"accept_report_sizes": [s.id("run", "plain-2")]}}
            }
        }
        night.defs.resolve_job_def("update_progress_job").execute_in_process(
            instance=night.instance, run_config=accept
        )
        assert _state(night, s, "ida", "plain") == (40, "dropped")
        sizes = night.query("SELECT run_uuid, enrolments FROM partners_dagster_report_sizes")
        assert dict(zip(sizes["run_uuid"].map(str), sizes["enrolments"], strict=True)) == {
            s.id("run", "plain-1"): 1,
            s.id("run", "plain-2"): 0,
        }
    finally:
        night.close()


# -- forgotten users leave no trace ------------------------------------------------------------


def test_a_forgotten_user_leaves_no_trace_in_our_tables(tmp_path, empty_database_url):
    s = _plain_course("plain-1")
    ida = s.user("ida")
    s.membership("ida-m", "ida@school.example.org")
    s.enrol("plain-1", "ida-m", "2027-01-05T10:00:00", 0.4)
    joe = s.user("joe", forgotten=True)
    s.membership("joe-m", "Joe@School.example.org")
    s.enrol("plain-1", "joe-m", "2027-01-05T10:00:00", 0.4)
    night = Night(s.build(), tmp_path, database_url=empty_database_url, cache=False)
    try:
        night.run("update_memberships_job")
        with night.engine.begin() as connection:
            connection.execute(
                text("UPDATE users SET forgotten = :yes WHERE id = :id"), {"yes": True, "id": ida}
            )
        night.api.requests.clear()
        result = night.run("update_memberships_job")
        links = night.query("SELECT user_id FROM partners_dagster_membership_links")
        lookups = night.query(
            "SELECT membership_uuid, external_learner_id, forgotten_at "
            "FROM partners_dagster_membership_lookups"
        )
        ours = json.dumps(
            [links.astype(str).values.tolist(), lookups.astype(str).values.tolist()]
        ).lower()
        for trace in ("ida@school", "joe@school", ida, joe):
            assert trace not in ours
        assert lookups["forgotten_at"].notna().all()
        # Still remembered as answered: the API is not asked again before it is due.
        assert night.api.requests["organisation_membership"] == 0
        # And never listed for support staff as "no such user".
        assert unmatched_memberships(night.repository(), show_emails=True).empty
        links_meta = materialization_metadata(result, "membership_links")
        assert links_meta["forgotten_users_link_rows_removed"] == 1
        assert links_meta["unmatched_no_such_user"] == 0
    finally:
        night.close()


# -- the users' arrays are the truth ----------------------------------------------------------


def test_a_membership_in_no_array_is_linked_again_even_with_an_old_link_row(
    tmp_path, empty_database_url
):
    s = _plain_course("plain-1")
    kim = s.user("kim")
    s.membership("kim-m", "kim@school.example.org")
    s.enrol("plain-1", "kim-m", "2027-01-05T10:00:00", 0.4)
    night = Night(s.build(), tmp_path, database_url=empty_database_url, cache=False)
    membership = s.id("membership", "kim-m")
    try:
        night.run("update_memberships_job")
        # The website empties kim's array: the membership is not linked any more.
        with night.engine.begin() as connection:
            empty = "'{}'" if night.engine.dialect.name == "postgresql" else "'[]'"
            connection.execute(
                text(
                    f"UPDATE users SET future_learn_organisation_memberships = {empty} WHERE id = :id"
                ),
                {"id": kim},
            )
        result = night.run("update_memberships_job")
        assert materialization_metadata(result, "membership_links")["memberships_linked"] == 1
        held = night.repository().linked_memberships()
        assert dict(zip(held["membership_uuid"], held["user_id"], strict=True)) == {membership: kim}
        # kim re-registers with the same email: the old account is deleted, a new one made.
        with night.engine.begin() as connection:
            connection.execute(text("DELETE FROM users WHERE id = :id"), {"id": kim})
            connection.execute(
                text(
                    "INSERT INTO users (id, email, created_at, updated_at) "
                    "VALUES (:id, 'kim@school.example.org', :now, :now)"
                ),
                {"id": s.id("user", "kim-again"), "now": "2027-02-01 00:00:00"},
            )
        result = night.run("update_memberships_job")
        links = materialization_metadata(result, "membership_links")
        assert links["memberships_linked"] == 1
        assert links["memberships_linked_to_another_user"] == 0
        held = night.repository().linked_memberships()
        assert set(held["user_id"]) == {s.id("user", "kim-again")}
        rows = night.query("SELECT membership_uuid, user_id FROM partners_dagster_membership_links")
        assert rows.astype(str).values.tolist() == [[membership, s.id("user", "kim-again")]]
    finally:
        night.close()


# -- no course run listed ----------------------------------------------------------------------


@pytest.mark.parametrize("what", ["no runs at all", "no run of a known course"])
def test_no_course_run_listed_fails_its_check_and_changes_nothing(tmp_path, what):
    s = Scenario()
    if what == "no run of a known course":
        s.course("plain")  # known, with no run
        s.course("elsewhere", known=False)
        s.run("elsewhere-1", "elsewhere")
    u = s.user("lou")
    s.membership("lou-m", u)
    night = Night(s.build(), tmp_path)
    try:
        before = night.every_row()
        for job in ("update_memberships_job", "update_progress_job"):
            result = night.run(job, raise_on_error=False)
            assert not result.success  # a blocking check: the rest of the run does not go on
            assert check_results(result)["runs_of_known_courses_listed"] is False
            ran = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
            assert ran <= {"course_runs"}
        assert night.every_row() == before
    finally:
        night.close()


# -- step 2 does not report unknown courses again ---------------------------------------------


def test_step_2_does_not_report_unknown_courses(night, tiny_dataset):
    assert tiny_dataset.unknown_course_uuids, "the dataset must have unknown courses"
    first = night.run("update_memberships_job")
    assert check_results(first)["no_unknown_courses"] is False
    result = night.run("update_progress_job")
    assert "no_unknown_courses" not in check_results(result)
    logs = [e.message for e in result.all_events if e.message]
    assert logs and not [m for m in logs if "unknown to Teach Computing" in m]
    runs = materialization_metadata(result, "course_runs")
    assert "unknown_courses" not in runs  # a count is fine, not the list
    assert runs["courses_unknown"] == len(tiny_dataset.unknown_course_uuids)


# -- SQLite's empty array ---------------------------------------------------------------------


def test_sqlite_users_array_defaults_to_an_empty_json_array_and_a_link_is_never_lost(tmp_path):
    s = _plain_course("plain-1")
    s.membership("max-m", "max@school.example.org")
    s.enrol("plain-1", "max-m", "2027-01-05T10:00:00", 0.4)
    s.membership("ned-m", "ned@school.example.org")
    s.enrol("plain-1", "ned-m", "2027-01-05T10:00:00", 0.4)
    night = Night(s.build(), tmp_path)
    try:
        with night.engine.begin() as connection:
            # A user row written without the column gets the table's default ...
            connection.execute(
                text(
                    "INSERT INTO users (id, email, created_at, updated_at) "
                    "VALUES (:id, 'max@school.example.org', '2027-01-01', '2027-01-01')"
                ),
                {"id": s.id("user", "max")},
            )
            default = connection.execute(
                text("SELECT future_learn_organisation_memberships FROM users WHERE id = :id"),
                {"id": s.id("user", "max")},
            ).scalar_one()
            # ... and one a table made by hand left at PostgreSQL's spelling of empty.
            connection.execute(
                text(
                    "INSERT INTO users (id, email, future_learn_organisation_memberships, "
                    "created_at, updated_at) VALUES "
                    "(:id, 'ned@school.example.org', '{}', '2027-01-01', '2027-01-01')"
                ),
                {"id": s.id("user", "ned")},
            )
        assert default == "[]"
        night.run("update_memberships_job")
        held = night.repository().linked_memberships()
        assert dict(zip(held["membership_uuid"], held["user_id"], strict=True)) == {
            s.id("membership", "max-m"): s.id("user", "max"),
            s.id("membership", "ned-m"): s.id("user", "ned"),
        }
    finally:
        night.close()
