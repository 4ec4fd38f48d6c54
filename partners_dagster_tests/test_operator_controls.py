"""Operator controls (docs/operator-controls.md): dry runs, scope and refetch, on real parts.

The promise a dry run makes: on unchanged API data and database, the real night that follows
makes exactly the changes the dry run listed. The changes the night made are read back from
the database itself (before and after), not from the plan's own code.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from partners_dagster.sandbox import Faults
from partners_dagster.steps.night_preview import preview_night
from partners_dagster.steps.run_scope import ScopeError

from .harness import Night, Scenario, materialization_metadata

BIN = Path(sys.executable).parent

# -- reading what a night changed, from the database alone -------------------------------------


def _str(value):
    return str(value).lower() if isinstance(value, uuid.UUID) else value


def snapshot(night: Night) -> dict:
    """What the change lines speak of, read straight from the tables."""
    q = night.query
    arrays = night.repository().membership_array_entries()
    return {
        "arrays": set(zip(arrays["membership_uuid"], arrays["user_id"], strict=True)),
        "matched_by": dict(
            q("SELECT membership_uuid, matched_by FROM partners_dagster_membership_links")
            .map(_str)
            .itertuples(index=False)
        ),
        "achievements": {
            row.id: row
            for row in q(
                "SELECT id, user_id, activity_id, programme_id, progress FROM achievements"
            )
            .map(_str)
            .itertuples(index=False)
        },
        "transitions": q(
            "SELECT id, achievement_id, to_state, sort_key FROM achievement_transitions"
        ).map(_str),
        "outbox": night.repository()
        .outbox()[["id", "job_class", "achievement_id", "run_at", "created_at"]]
        .map(_str),
    }


def changes_between(before: dict, after: dict) -> Counter:
    """The change lines (run_at as seconds after the row was written) the database shows."""
    lines: Counter = Counter()
    for m, u in after["arrays"] - before["arrays"]:
        lines[("link", m, u, after["matched_by"].get(m))] += 1
    achievements = after["achievements"]
    for i, a in achievements.items():
        old = before["achievements"].get(i)
        if old is None:
            lines[("achievement", a.user_id, a.activity_id, a.programme_id)] += 1
        start = 0 if old is None else int(old.progress)
        if int(a.progress) != start:
            lines[("progress", a.user_id, a.activity_id, start, int(a.progress))] += 1
    transitions = after["transitions"].sort_values(["achievement_id", "sort_key"])
    new_ids = set(transitions["id"]) - set(before["transitions"]["id"])
    previous: dict[str, str] = {}
    for t in transitions.itertuples(index=False):
        if t.id in new_ids:
            a = achievements[t.achievement_id]
            state = previous.get(t.achievement_id, "enrolled")
            lines[("transition", a.user_id, a.activity_id, state, t.to_state)] += 1
        previous[t.achievement_id] = t.to_state
    outbox = after["outbox"]
    for job in outbox[~outbox["id"].isin(before["outbox"]["id"])].itertuples(index=False):
        a = achievements[job.achievement_id]
        offset = round((job.run_at - job.created_at).total_seconds())
        lines[("job", job.job_class, a.user_id, a.activity_id, offset)] += 1
    return lines


def plan_lines(changes: list[dict], now: datetime) -> Counter:
    lines: Counter = Counter()
    for c in changes:
        kind = c["change"]
        if kind == "link":
            lines[(kind, c["membership_uuid"], c["user_id"], c["matched_by"])] += 1
        elif kind == "achievement":
            lines[(kind, c["user_id"], c["activity_id"], c["programme_id"])] += 1
        elif kind == "progress":
            lines[(kind, c["user_id"], c["activity_id"], c["from"], c["to"])] += 1
        elif kind == "transition":
            lines[(kind, c["user_id"], c["activity_id"], c["from_state"], c["to_state"])] += 1
        else:
            run_at = datetime.fromisoformat(c["run_at"].replace("Z", "+00:00"))
            offset = round((run_at - now).total_seconds())
            lines[(kind, c["job_class"], c["user_id"], c["activity_id"], offset)] += 1
    return lines


def preview(night: Night, **scope) -> tuple[list[dict], datetime]:
    api = night.resources["partners_api"]
    now = datetime.now(UTC)
    result = preview_night(
        api.client,
        night.repository(),
        ignored_courses=api.ignored_courses,
        refresh_days=api.membership_refresh_days,
        globalid_app="teach-computing",
        now=now,
        **scope,
    )
    return result.plan.changes, now


def dry_run_config(**options) -> dict:
    return {"resources": {"run_options": {"config": {"dry_run": True, **options}}}}


def run(night: Night, job: str, run_config: dict | None = None, **kwargs):
    return night.defs.resolve_job_def(job).execute_in_process(
        instance=night.instance, run_config=run_config or {}, **kwargs
    )


# -- the edge cases, by hand ------------------------------------------------------------------


def edge_case_scenario() -> Scenario:
    s = Scenario()
    s.course("python", programmes=("primary-certificate",), category="online")
    s.course("networks", programmes=("cs-accelerator",))
    s.course("broken")
    s.run("python-1", "python")
    s.run("python-2", "python")
    s.run("networks-1", "networks")
    s.run("broken-1", "broken")
    # Linked tonight by email, and completes tonight: certificate, badge, email, next steps.
    ann = s.user("ann")
    s.membership("ann-m", "ANN@school.example.org ")
    s.enrol("python-1", "ann-m", "2027-01-05T10:00:00", 0.2)
    s.enrol("python-2", "ann-m", "2027-02-05T10:00:00", 0.75)
    # Linked tonight by id: a CS Accelerator achievement created (auto-enrolment).
    bob = s.user("bob")
    s.membership("bob-m", bob)
    s.enrol("networks-1", "bob-m", "2027-01-05T10:00:00", 0.3)
    s.enrol("broken-1", "bob-m", "2027-01-05T10:00:00", 0.9)
    # Forgotten: never linked, never touched.
    s.user("cat", forgotten=True)
    s.membership("cat-m", "cat@school.example.org")
    s.enrol("python-2", "cat-m", "2027-02-05T10:00:00", 0.9)
    # An email that names two users: nobody is linked.
    s.user("dan", "dan@school.example.org")
    s.user("dan2", "Dan@School.example.org")
    s.membership("dan-m", "dan@school.example.org")
    s.enrol("python-2", "dan-m", "2027-02-05T10:00:00", 0.9)
    # Dropped from an older run, back in progress on the newer one.
    s.user("eve")
    s.membership("eve-m", s.id("user", "eve"))
    s.enrol("python-1", "eve-m", "2027-01-05T10:00:00", 0.1, left="2027-01-20T10:00:00")
    assert ann and bob
    return s


def malformed_report_fault(scenario: Scenario, run: str, membership: str) -> Faults:
    """The run's report with one malformed record (ratio 1.5): its course is skipped."""
    record = {
        "run": {"uuid": scenario.id("run", run), "href": "x"},
        "organisation_membership": {"uuid": scenario.id("membership", membership), "href": "x"},
        "status": "active",
        "activated_at": "2027-01-05T10:00:00.000Z",
        "deactivated_at": None,
        "steps_completed_count": 3,
        "steps_completed_ratio": 1.5,
    }
    path = f"/partners/course_runs/{scenario.id('run', run)}/course_enrolments_report"
    return Faults(
        overrides={
            path: {"status": 200, "content_type": "application/json", "body": json.dumps([record])}
        }
    )


@pytest.fixture
def edge_night(tmp_path, empty_database_url):
    scenario = edge_case_scenario()
    night = Night(scenario.build(), tmp_path, database_url=empty_database_url)
    night.api.faults = malformed_report_fault(scenario, "broken-1", "bob-m")
    yield scenario, night
    night.close()


def test_the_night_after_a_dry_run_makes_exactly_the_changes_it_listed(edge_night):
    scenario, night = edge_night
    before_rows = night.every_row()
    changes, now = preview(night)
    assert night.every_row() == before_rows, "the preview wrote something"
    kinds = Counter(c["change"] for c in changes)
    assert kinds["link"] == 3 and kinds["achievement"] == 3 and kinds["job"] >= 5, kinds

    before = snapshot(night)
    night.both_steps()
    made = changes_between(before, snapshot(night))
    assert made == plan_lines(changes, now)
    # The edge cases are in it: tonight's link progressed tonight, completion jobs, none for
    # the forgotten user, the ambiguous email or the course with a malformed record.
    users = {c.get("user_id") for c in changes}
    assert scenario.id("user", "cat") not in users
    assert not {scenario.id("user", "dan"), scenario.id("user", "dan2")} & users
    assert scenario.id("activity", "broken") not in {c.get("activity_id") for c in changes}
    jobs = {c["job_class"] for c in changes if c["change"] == "job"}
    assert {
        "CertificatePendingTransitionJob",
        "IssueBadgeJob",
        "CompleteAchievementEmailJob",
        "CSAccelerator::CheckNextStepsJob",
        "CSAccelerator::AutoEnrolJob",
    } <= jobs

    # The second night changes nothing, and its dry run lists nothing.
    assert preview(night)[0] == []


def test_the_first_night_on_the_sandbox_makes_exactly_what_its_preview_listed(
    tiny_dataset, tmp_path, empty_database_url
):
    night = Night(tiny_dataset, tmp_path, database_url=empty_database_url)
    try:
        changes, now = preview(night)
        assert len(changes) > 1000
        before = snapshot(night)
        night.both_steps()
        assert changes_between(before, snapshot(night)) == plan_lines(changes, now)
    finally:
        night.close()


def test_a_dry_run_of_either_job_writes_nothing_anywhere(edge_night, tmp_path):
    from .redis_server import RedisServer

    scenario, night = edge_night
    night.both_steps()  # a night with links and an outbox, then the API moves on
    scenario.enrol("python-2", "bob-m", "2027-03-05T10:00:00", 0.95)
    scenario.rebuild_enrolments(night.dataset)
    night.query("SELECT 1")  # the engine is warm
    with RedisServer(tmp_path / "redis") as redis_server:
        import redis

        from partners_dagster.definitions import build_definitions
        from partners_dagster.sidekiq.resource import SidekiqResource

        resources = {
            **night.resources,
            "sidekiq": SidekiqResource(redis_url=redis_server.url),
        }
        defs = build_definitions(resources)
        client = redis.Redis.from_url(redis_server.url)
        before = night.every_row()
        for job in ("update_memberships_job", "update_progress_job"):
            result = defs.resolve_job_def(job).execute_in_process(
                instance=night.instance, run_config=dry_run_config(refetch=True)
            )
            assert result.success
        assert night.every_row() == before
        assert client.dbsize() == 0
        client.close()
    progress = materialization_metadata(result, "achievement_progress")
    assert progress["dry_run"] is True
    assert progress["plan_progress"] == 1 and progress["plan_transition"] == 1
    assert "DRY RUN" in progress["plan"]
    assert "@" not in progress["plan_preview"]  # ids only, never an email
    assert materialization_metadata(result, "follow_up_jobs")["delivered"] == 0


def test_a_dry_run_of_step_2_lists_what_the_real_step_2_then_does(tiny_dataset, tmp_path):
    """The Dagster dry run (not the preview) on a steady night, on the tiny sandbox."""
    # A copy: the API moving on must not reach the session's dataset other tests serve.
    night = Night(copy.deepcopy(tiny_dataset), tmp_path)
    try:
        night.both_steps()
        # The API moves on: a quarter of the enrolments gain progress.
        enrolments = night.dataset.enrolments
        moved = enrolments.index[::4]
        enrolments.loc[moved, "steps_completed_ratio"] = 1.0
        night.dataset.reindex()
        night.resources["partners_api"].client.clear_cache()
        dry = run(night, "update_progress_job", dry_run_config())
        planned = materialization_metadata(dry, "achievement_progress")
        before = snapshot(night)
        night.run("update_progress_job")
        made = Counter(line[0] for line in changes_between(before, snapshot(night)).elements())
    finally:
        night.close()
    assert made["progress"] > 0
    for kind in ("achievement", "progress", "transition", "job"):
        assert planned[f"plan_{kind}"] == made[kind], kind


# Row locks: PostgreSQL only (SQLite readers never wait for a writer).
@pytest.mark.parametrize("empty_database_url", ["postgresql"], indirect=True)
def test_a_dry_run_takes_no_lock_the_website_would_wait_for(edge_night):
    """On PostgreSQL a real night locks each course's achievements while it writes them; a
    dry run reads them without a lock, so it finishes while the website holds them."""
    import threading

    from sqlalchemy import create_engine, text

    scenario, night = edge_night
    night.both_steps()
    website = create_engine(night.database_url)
    connection = website.connect()
    transaction = connection.begin()
    held = connection.execute(text("SELECT id FROM achievements FOR UPDATE")).all()
    assert held
    results = []
    worker = threading.Thread(
        target=lambda: results.append(run(night, "update_progress_job", dry_run_config()))
    )
    try:
        worker.start()
        worker.join(timeout=180)
        finished_while_locked = not worker.is_alive()
    finally:
        transaction.rollback()
        connection.close()
        worker.join(timeout=180)
        website.dispose()
    assert finished_while_locked
    assert results and results[0].success


# -- scope ------------------------------------------------------------------------------------


def test_an_unknown_course_or_user_in_the_scope_stops_the_run_before_any_write(edge_night):
    scenario, night = edge_night
    before = night.every_row()
    stranger = str(uuid.uuid4())
    for options, named in (
        ({"courses": [stranger]}, stranger),
        ({"courses": ["not-a-uuid"]}, "not-a-uuid"),
        ({"users": ["nobody@school.example.org"]}, "no user has the id or email"),
        ({"users": ["dan@school.example.org"]}, "names 2 users"),
    ):
        result = run(
            night,
            "update_progress_job",
            {"resources": {"run_options": {"config": options}}},
            raise_on_error=False,
        )
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert named in failure.step_failure_data.user_failure_data.description
        assert night.every_row() == before
        with pytest.raises(ScopeError, match=named.split("@")[0][:10]):
            preview(night, **options)
    assert night.every_row() == before


def test_a_scoped_run_changes_only_its_users_rows_as_a_full_night_would(tmp_path):
    scenario = edge_case_scenario()
    (tmp_path / "full").mkdir()
    (tmp_path / "scoped").mkdir()
    full = Night(scenario.build(), tmp_path / "full", cache=False)
    scoped = Night(scenario.build(), tmp_path / "scoped", cache=False)
    try:
        full.both_steps()
        ann, eve = scenario.id("user", "ann"), scenario.id("user", "eve")
        config = {
            "resources": {
                "run_options": {
                    # one by email (any case), one by id
                    "config": {"users": ["Ann@School.example.org", eve]}
                }
            }
        }
        run(scoped, "update_memberships_job", config)
        run(scoped, "update_progress_job", config)
        scoped_state, full_state = scoped.state(), full.state()
        for name in ("links", "achievements", "outbox"):
            mine = full_state[name]
            if "user_id" in mine:
                mine = mine[mine["user_id"].isin([ann, eve])].reset_index(drop=True)
            else:  # outbox: arguments name the achievement as "user/activity" or the user
                mine = mine[
                    mine["arguments"].str.contains(ann) | mine["arguments"].str.contains(eve)
                ].reset_index(drop=True)
            pd.testing.assert_frame_equal(scoped_state[name], mine, check_dtype=False)
        assert not scoped_state["achievements"].empty
        assert set(scoped_state["links"]["user_id"]) == {ann, eve}
    finally:
        # The reverse of their making: each Night's test instance restores what it replaced.
        scoped.close()
        full.close()


def test_a_courses_scope_reads_only_those_courses_runs(edge_night):
    scenario, night = edge_night
    python = scenario.id("course", "python")
    night.api.requests.clear()
    changes, _ = preview(night, courses=[python.upper()])
    assert night.api.requests["course_enrolments_report"] == 2  # python-1 and python-2
    assert {c["activity_id"] for c in changes if "activity_id" in c} == {
        scenario.id("activity", "python")
    }


# -- refetch ----------------------------------------------------------------------------------


def test_refetch_asks_the_api_again_and_stores_the_new_answers(night):
    night.run("update_memberships_job")
    night.api.requests.clear()
    night.run("update_progress_job")  # from the response cache: no report asked again
    assert night.api.requests["course_enrolments_report"] == 0
    refetched = run(
        night,
        "update_progress_job",
        {"resources": {"run_options": {"config": {"refetch": True}}}},
    )
    reports = night.api.requests["course_enrolments_report"]
    assert reports > 0
    assert (
        materialization_metadata(refetched, "course_enrolments")["api_network_requests"] == reports
    )
    night.api.requests.clear()
    night.run("update_progress_job")  # the refetched answers were stored
    assert night.api.requests["course_enrolments_report"] == 0


# -- the command line -------------------------------------------------------------------------


def test_preview_writes_the_plan_as_json_lines_with_progress_and_a_summary(edge_night, tmp_path):
    scenario, night = edge_night
    out = tmp_path / "plan.jsonl"
    before = night.every_row()
    completed = subprocess.run(
        [str(BIN / "partners-dagster"), "preview", "--out", str(out)],
        env=night.environment(tmp_path / "dagster_home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert night.every_row() == before
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    shapes = {
        "link": {"change", "membership_uuid", "user_id", "matched_by"},
        "achievement": {"change", "user_id", "activity_id", "programme_id"},
        "progress": {"change", "user_id", "activity_id", "from", "to"},
        "transition": {"change", "user_id", "activity_id", "from_state", "to_state"},
        "job": {"change", "job_class", "user_id", "activity_id", "run_at"},
    }
    assert {line["change"] for line in lines} == set(shapes)
    for line in lines:
        assert set(line) == shapes[line["change"]]
        for key in ("membership_uuid", "user_id", "activity_id"):
            if line.get(key):
                assert line[key] == str(uuid.UUID(line[key]))
    assert all(isinstance(line["from"], int) for line in lines if line["change"] == "progress")
    assert all(line["run_at"].endswith("Z") for line in lines if line["change"] == "job")
    assert "step 2: courses planned 2/2" in completed.stderr
    assert f"{len(lines)} change(s)" in completed.stderr.splitlines()[-1]
    assert "dry run, nothing written" in completed.stderr.splitlines()[-1]
    assert "@" not in out.read_text()  # ids only, never an email

    unknown = subprocess.run(
        [str(BIN / "partners-dagster"), "preview", "--users", "nobody@nowhere.example"],
        env=night.environment(tmp_path / "dagster_home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unknown.returncode != 0
    assert "no user has the id or email" in unknown.stderr
    assert "nobody@nowhere.example" not in unknown.stderr  # masked


def test_the_launchpad_shows_every_control_at_its_default(night):
    for job in ("update_memberships_job", "update_progress_job"):
        job_def = night.defs.resolve_job_def(job)
        schema = job_def.run_config_schema.config_type
        options = schema.fields["resources"].config_type.fields["run_options"]
        config = options.config_type.fields["config"]
        assert config.default_value == {
            "dry_run": False,
            "courses": [],
            "users": [],
            "refetch": False,
            "accept_report_sizes": [],
        }
    assert isinstance(night.defs.resolve_job_def(job), dg.JobDefinition)
