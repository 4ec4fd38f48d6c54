"""What operators rely on: the audit trail, checks that can fail, secrets kept out of storage."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from click.testing import CliRunner

from partners_dagster.sandbox import DEFAULT_CONSUMER_SECRET, Faults
from partners_dagster.steps.course_progress import CoursePlan, plan_violations
from partners_dagster.teachcomputing.repository import TeachComputingRepository
from partners_dagster.tools.cli import main

from .harness import Night, check_metadata, check_results, materialization_metadata


def test_audit_shows_links_and_transitions_with_run_ids(night):
    memberships_run, progress_run = night.both_steps()
    user = night.query(
        "SELECT u.id, u.email FROM users u JOIN achievements a ON a.user_id = u.id "
        "JOIN achievement_transitions t ON t.achievement_id = a.id LIMIT 1"
    ).iloc[0]
    runner = CliRunner()
    masked = runner.invoke(
        main, ["audit", f"  {user['email'].upper()} ", "--database-url", night.database_url]
    )
    assert masked.exit_code == 0, masked.output
    assert user["id"] in masked.output
    assert memberships_run.run_id in masked.output and progress_run.run_id in masked.output
    assert user["email"] not in masked.output and "***@" in masked.output
    shown = runner.invoke(
        main, ["audit", user["id"], "--show-emails", "--database-url", night.database_url]
    )
    assert user["email"] in shown.output
    missing = runner.invoke(
        main, ["audit", "nobody@example.org", "--database-url", night.database_url]
    )
    assert missing.exit_code != 0 and "no Teach Computing user" in missing.output


def test_malformed_enrolments_fail_their_check_and_leave_the_course_untouched(night, tiny_dataset):
    night.both_steps()
    runs = tiny_dataset.runs
    run = runs[runs["course_uuid"].isin(tiny_dataset.known_course_uuids)].iloc[0]
    course = run["course_uuid"]
    before = night.query("SELECT * FROM achievements_with_state ORDER BY id")
    report = json.loads(
        night.api._report_json(night.server.url, tiny_dataset.run_index[run["run_uuid"]])
    )
    report[0]["steps_completed_ratio"] = "lots"
    for row in report[1:]:
        row["steps_completed_ratio"] = 1.0  # would complete everybody, if it were applied
    path = f"/partners/course_runs/{run['run_uuid']}/course_enrolments_report"
    night.api.faults = Faults(overrides={path: {"body": json.dumps(report)}})
    night.cache_path.unlink()
    result = night.run("update_progress_job")
    assert check_results(result)["no_malformed_enrolments"] is False
    assert materialization_metadata(result, "course_enrolments")["records_rejected"] == 1
    check = check_metadata(result, "no_malformed_enrolments")
    assert check["records_rejected"] == 1
    assert "steps_completed_ratio must be a number" in check["first_reasons"]
    assert course in materialization_metadata(result, "achievement_progress")["skipped_courses"]
    after = night.query("SELECT * FROM achievements_with_state ORDER BY id")
    pd.testing.assert_frame_equal(before, after)


def test_ambiguous_matches_fail_their_check_and_link_nobody(night, tiny_dataset):
    member = tiny_dataset.memberships.query("kind == 'user_id'").iloc[0]
    someone_else = tiny_dataset.users["id"].iat[-1]
    with night.engine.begin() as connection:  # a user whose email is, absurdly, another user's id
        connection.exec_driver_sql(
            "UPDATE users SET email = ? WHERE id = ?", (member["external_learner_id"], someone_else)
        )
    result = night.run("update_memberships_job")
    assert check_results(result)["no_ambiguous_matches"] is False
    assert materialization_metadata(result, "membership_links")["unmatched_ambiguous"] == 1
    linked = night.repository().linked_memberships()
    assert member["membership_uuid"] not in set(linked["membership_uuid"])


def test_progress_check_counts_what_it_guards(night):
    night.both_steps()
    stored = night.query(
        "SELECT id, user_id, progress, current_state AS state FROM achievements_with_state"
    )
    complete = stored[stored["state"] == "complete"].iloc[0]
    partial = stored[stored["state"] == "in_progress"].iloc[0]
    bad = CoursePlan(
        updates=[
            {"id": complete["id"], "progress": 100},
            {"id": partial["id"], "progress": int(partial["progress"]) - 1},
        ]
    )
    assert plan_violations(stored, bad) == {"progress_decreases": 1, "complete_changed": 1}
    assert plan_violations(stored, CoursePlan()) == {
        "progress_decreases": 0,
        "complete_changed": 0,
    }
    repository = TeachComputingRepository(night.engine)
    with night.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO achievement_transitions (achievement_id, to_state, sort_key, most_recent, metadata, created_at, updated_at) "
            "VALUES (?, 'dropped', 999, 0, ?, '2027-01-01 00:00:00', '2027-01-01 00:00:00')",
            (complete["id"], json.dumps({"dagster_run_id": "bad-run"})),
        )
    assert repository.run_audit("bad-run") == {"transitions": 1, "transitions_from_complete": 1}


def test_no_secret_or_token_in_storage_cache_or_logs(tiny_dataset, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    night = Night(tiny_dataset, tmp_path)
    try:
        night.both_steps()
        tokens = set(night.api.tokens_seen)
        event_text = "".join(
            str(record)
            for run in night.instance.get_runs()
            for record in night.instance.all_logs(run.run_id)
        )
    finally:
        night.close()
    assert len(event_text) > 10_000
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert (
        tokens and tiny_dataset.runs["run_uuid"].iat[0].encode() in stored
    )  # the grep sees what is there
    for text in (DEFAULT_CONSUMER_SECRET, *tokens):
        assert text.encode() not in stored
        assert text not in event_text
        assert text not in caplog.text


@pytest.mark.parametrize("damage", ["title", "course"])
def test_a_malformed_run_record_leaves_its_course_or_every_course_untouched(
    night, tiny_dataset, damage
):
    night.both_steps()
    before = night.query("SELECT * FROM achievements_with_state ORDER BY id")
    runs = json.loads(night.api._runs_json(night.server.url))
    known = [r for r in runs if r["course"]["uuid"] in tiny_dataset.known_course_uuids]
    victim = known[0]
    del victim[damage]  # "course": the record no longer says which course it belongs to
    # Tomorrow: everyone on the victim's course would now complete, if it were read.
    enrolments = tiny_dataset.enrolments.copy()
    tiny_dataset.enrolments = enrolments.assign(
        steps_completed_ratio=1.0, steps_completed_count=100
    )
    tiny_dataset.reindex()
    night.api.faults = Faults(overrides={"/partners/course_runs": {"body": json.dumps(runs)}})
    night.cache_path.unlink()
    try:
        result = night.run("update_progress_job")
    finally:
        tiny_dataset.enrolments = enrolments
        tiny_dataset.reindex()
    assert check_results(result)["no_malformed_runs"] is False
    skipped = materialization_metadata(result, "achievement_progress")["skipped_courses"]
    after = night.query("SELECT * FROM achievements_with_state ORDER BY id")
    activity = night.query(
        f"SELECT id FROM activities WHERE future_learn_course_uuid = '{victim.get('course', {'uuid': known[1]['course']['uuid']})['uuid']}'"
    )["id"].iat[0]
    untouched = after[after["activity_id"] == activity]
    assert untouched.equals(before[before["activity_id"] == activity])
    if damage == "title":
        assert victim["course"]["uuid"] in skipped
        assert not after.equals(before), "the other courses go on"
    else:
        pd.testing.assert_frame_equal(after, before)  # could be any course: none is touched
        assert all(course in skipped for course in tiny_dataset.known_course_uuids)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2//tc:db-hunter2@127.0.0.1/tc",  # a colon missing
        "postgresq://tc:db-hunter2@127.0.0.1/tc",  # a misspelt dialect
        "postgresql+psycopg2://tc:db-hunter2@127.0.0.1:1/tc",  # nothing listens there
    ],
)
def test_a_mistyped_database_url_keeps_its_password_out_of_the_event_log(night, url):
    # Hardening item 7.
    from partners_dagster.definitions import build_definitions
    from partners_dagster.teachcomputing.resource import TeachComputingDatabaseResource

    resources = {
        **night.resources,
        "teachcomputing_db": TeachComputingDatabaseResource(database_url=url),
    }
    job = build_definitions(resources).resolve_job_def("update_memberships_job")
    result = job.execute_in_process(instance=night.instance, raise_on_error=False)
    assert not result.success
    logged = "".join(str(record) for record in night.instance.all_logs(result.run_id)) + "".join(
        str(e) for e in result.all_events
    )
    assert "TEACHCOMPUTING_DATABASE_URL" in logged or "127.0.0.1" in logged
    assert "db-hunter2" not in logged


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("ÉLODIE@school.example.org", "élodie@school.example.org"),
        ("İnci@school.example.org", "i̇nci@SCHOOL.example.org"),
        (" jo@school.example.org", "JO@school.example.org "),
    ],
)
def test_audit_finds_a_user_by_email_folded_as_matching_folds_it(night, stored, asked):
    # Hardening item 12: one folding everywhere, Python's.
    user = night.query("SELECT id FROM users LIMIT 1")["id"].iat[0]
    with night.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET email = ? WHERE id = ?", (stored, user))
    found = CliRunner().invoke(main, ["audit", asked, "--database-url", night.database_url])
    assert found.exit_code == 0, found.output
    assert str(user) in found.output


def test_bench_refuses_a_database_that_holds_data_and_never_drops_a_table(tiny_dataset, tmp_path):
    # Hardening item 8.
    from partners_dagster.teachcomputing.engine import make_engine
    from partners_dagster.tools.bench import DatabaseInUseError, prepare_database

    engine = make_engine(f"sqlite:///{tmp_path / 'website.sqlite3'}")
    try:
        prepare_database(engine, tiny_dataset)  # an empty database: the bench creates it all
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE schema_migrations (version varchar)")
            connection.exec_driver_sql("INSERT INTO schema_migrations VALUES ('20210101')")
        with pytest.raises(DatabaseInUseError, match="holds data in activities"):
            prepare_database(engine, tiny_dataset)
        prepare_database(engine, tiny_dataset, force=True)  # rows replaced, tables kept
        with engine.connect() as connection:
            kept = connection.exec_driver_sql("SELECT version FROM schema_migrations").all()
            users = connection.exec_driver_sql("SELECT count(*) FROM users").scalar_one()
    finally:
        engine.dispose()
    assert kept == [("20210101",)] and users == len(tiny_dataset.users)
    refused = CliRunner().invoke(
        main,
        ["bench", "--scale", "tiny", "--database-url", f"sqlite:///{tmp_path / 'website.sqlite3'}"],
    )
    assert refused.exit_code != 0 and "--force" in refused.output
