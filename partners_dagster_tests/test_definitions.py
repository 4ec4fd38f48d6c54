"""The contract of DESIGN.md: names of assets, jobs, schedules and resources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

import partners_dagster
from partners_dagster.definitions import defs


def test_defs_is_importable_both_ways():
    assert partners_dagster.defs is defs
    assert isinstance(defs, dg.Definitions)


def test_assets_and_their_group():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {
        "course_runs",
        "course_enrolments",
        "organisation_memberships",
        "membership_links",
        "latest_enrolments",
        "achievement_progress",
    }
    for key in graph.get_all_asset_keys():
        assert graph.get(key).group_name == "futurelearn_partners"


def test_jobs_select_their_steps():
    def selected(job: str) -> set[str]:
        return {
            k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys
        }

    assert selected("update_memberships_job") == {
        "course_runs",
        "course_enrolments",
        "organisation_memberships",
        "membership_links",
    }
    assert selected("update_progress_job") == {
        "course_runs",
        "course_enrolments",
        "latest_enrolments",
        "achievement_progress",
    }


def test_schedules():
    memberships = defs.resolve_schedule_def("update_memberships_schedule")
    progress = defs.resolve_schedule_def("update_progress_schedule")
    assert (memberships.cron_schedule, memberships.execution_timezone, memberships.job_name) == (
        "0 2 * * *",
        "Europe/London",
        "update_memberships_job",
    )
    assert (progress.cron_schedule, progress.execution_timezone, progress.job_name) == (
        "*/15 2-5 * * *",
        "Europe/London",
        "update_progress_job",
    )


def test_resources_and_their_secrets_come_from_the_environment():
    resources = defs.resources
    assert set(resources) >= {"partners_api", "teachcomputing_db"}
    api = resources["partners_api"]
    assert api.consumer_secret == dg.EnvVar("FL_PARTNERS_CONSUMER_SECRET")
    assert api.consumer_key == dg.EnvVar("FL_PARTNERS_CONSUMER_KEY")
    assert api.base_url == dg.EnvVar("FL_PARTNERS_URL")


def test_workspace_yaml_loads_the_code_location(tmp_path):
    # `dagster definitions validate` loads workspace.yaml the way the webserver and daemon do.
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True,
        text=True,
        env={"DAGSTER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-2000:]
