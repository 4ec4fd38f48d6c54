"""The contract of docs/contracts.md: names of assets, jobs, schedules and resources."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from partners_dagster.definitions import build_definitions

from .contract import ASSET_NAMES

ROOT = Path(__file__).resolve().parents[1]
defs = build_definitions()


def test_importing_any_module_does_no_work_and_reads_no_variable():
    # A malformed setting breaks only what uses it: importing every module, and loading
    # the definitions module, must neither fail nor build anything.
    code = (
        "import importlib, pkgutil, sys, partners_dagster\n"
        "for m in pkgutil.walk_packages(partners_dagster.__path__, 'partners_dagster.'):\n"
        "    importlib.import_module(m.name)\n"
        "import partners_dagster.definitions as d\n"
        "assert not isinstance(d.defs, __import__('dagster').Definitions)\n"
        "print(len(sys.modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "FL_PARTNERS_MAX_CONCURRENCY": "abc"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _fresh_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter with an empty environment of its own; it must succeed."""
    env = {
        "PATH": "/usr/bin:/bin",
        "DAGSTER_HOME": str(tmp_path),
        "PARTNERS_DAGSTER_DATA": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_loading_the_definitions_leaves_run_only_libraries_unimported(tmp_path):
    # The code server, the daemon and every run process load the definitions; the HTTP
    # client, the database layer and the test tools load only when a step uses them.
    code = (
        "import sys, partners_dagster.definitions as d\n"
        "d.defs().get_repository_def()\n"
        "heavy = ['sqlalchemy', 'requests', 'requests_cache', 'redis', 'jwt', 'tenacity',\n"
        "         'alembic', 'starlette', 'uvicorn', 'sentry_sdk', 'slack_sdk',\n"
        "         'partners_dagster.sandbox', 'partners_dagster.tools',\n"
        "         'partners_dagster.partners_api.client', 'partners_dagster.teachcomputing.repository']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    result = _fresh_python(code, tmp_path)
    assert result.stdout.strip().splitlines()[-1:] in ([], [""]), result.stdout


def test_loading_the_code_location_settles_its_objects_and_skips_the_last_collection(tmp_path):
    # The interpreter's last full collection over a run's heap took seconds after every run;
    # the definitions take long-lived objects out of the collector's sight, and at exit skip
    # it: a cycle with a finaliser made during the "run" is not finalised at exit.
    code = (
        "import gc, partners_dagster.definitions as d\n"
        "d.defs()\n"
        "print('frozen', gc.get_freeze_count() > 1000)\n"
        "class Node:\n"
        "    def __del__(self): print('finalised at exit')\n"
        "a, b = Node(), Node(); a.other, b.other = b, a\n"
        "del a, b\n"
    )
    result = _fresh_python(code, tmp_path)
    assert "frozen True" in result.stdout
    assert "finalised at exit" not in result.stdout
    # The control: without the definitions, the same cycle is finalised at exit.
    control = _fresh_python(code.replace("d.defs()", "pass"), tmp_path)
    assert "finalised at exit" in control.stdout


def test_rules_import_without_dagster():
    code = "import sys, partners_dagster.rules; print('dagster' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_db_upgrade_works_while_a_partners_setting_is_malformed(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "FL_PARTNERS_MAX_CONCURRENCY": "abc",
        "FL_PARTNERS_CACHE_EXPIRY_SECONDS": "soon",
        "TEACHCOMPUTING_DATABASE_URL": f"sqlite:///{tmp_path / 'tc.sqlite3'}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "partners_dagster.tools.cli", "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "at revision" in result.stdout


def test_the_lazy_defs_build_the_same_definitions():
    from partners_dagster.definitions import defs as lazy

    built = lazy()
    assert isinstance(built, dg.Definitions)
    assert {k.to_user_string() for k in built.resolve_asset_graph().get_all_asset_keys()} == {
        k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()
    }


def test_the_workspace_file_is_the_one_the_tools_write(tmp_path):
    from partners_dagster.tools.local_instance import write_workspace

    written = write_workspace(tmp_path / "workspace.yaml").read_text()
    assert (ROOT / "workspace.yaml").read_text() == written


def test_assets_and_their_group():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(ASSET_NAMES)
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
        "follow_up_jobs",
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
        ["30,45 2 * * *", "*/15 3-5 * * *"],
        "Europe/London",
        "update_progress_job",
    )


@pytest.mark.parametrize("night", ["2026-01-15", "2026-03-29", "2026-10-25"])
def test_the_progress_schedule_ticks_every_15_minutes_from_02_30_to_05_45(night):
    from zoneinfo import ZoneInfo

    from dagster._utils.schedules import schedule_execution_time_iterator

    progress = defs.resolve_schedule_def("update_progress_schedule")
    london = ZoneInfo("Europe/London")
    start = datetime.fromisoformat(f"{night}T00:00").replace(tzinfo=london)
    ticks = []
    for tick in schedule_execution_time_iterator(
        start.timestamp(), progress.cron_schedule, progress.execution_timezone
    ):
        if tick.astimezone(london).date() != start.date():
            break
        ticks.append(tick.astimezone(london).strftime("%H:%M"))
    # 02:30 and 02:45, then 03:00 to 05:45: 14 ticks, the same on the nights the clocks change.
    expected = ["02:30", "02:45"] + [f"{h:02d}:{m:02d}" for h in (3, 4, 5) for m in (0, 15, 30, 45)]
    assert ticks == expected


def test_resources_and_their_secrets_come_from_the_environment():
    resources = defs.resources
    assert set(resources) >= {"partners_api", "teachcomputing_db", "sidekiq"}
    api = resources["partners_api"]
    assert api.consumer_secret == dg.EnvVar("FL_PARTNERS_CONSUMER_SECRET")
    assert api.consumer_key == dg.EnvVar("FL_PARTNERS_CONSUMER_KEY")
    assert api.base_url == dg.EnvVar("FL_PARTNERS_URL")


def test_dg_check_defs_loads_the_project(tmp_path):
    # `dg check defs` loads the definitions the way `dg` and the tools see them ([tool.dg]).
    dg = Path(sys.executable).with_name("dg")
    result = subprocess.run(
        [str(dg), "check", "defs"],
        capture_output=True,
        text=True,
        env={"DAGSTER_HOME": str(tmp_path), "PATH": f"{dg.parent}:/usr/bin:/bin"},
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_both_jobs_have_a_run_timeout_that_run_monitoring_enforces():
    # Hardening item 4: no night can hold the API's run queue for ever.
    import yaml

    for job in ("update_memberships_job", "update_progress_job"):
        tags = defs.resolve_job_def(job).tags
        assert 0 < float(tags["dagster/max_runtime"]) <= 6 * 3600
    instance = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert instance["run_monitoring"]["enabled"] is True


def test_resource_reprs_show_no_secret_or_password():
    # Hardening item 10.
    from partners_dagster.partners_api.resource import PartnersApiResource
    from partners_dagster.teachcomputing.resource import TeachComputingDatabaseResource

    api = PartnersApiResource(
        base_url="https://api.example.org",
        consumer_key="key",
        consumer_secret="the-consumer-secret",
        cache="redis://:cache-password@127.0.0.1:6379/0",
    )
    database = TeachComputingDatabaseResource(
        database_url="postgresql+psycopg2://tc:db-password@127.0.0.1/tc"
    )
    for shown in (repr(api), str(api), repr(database), str(database)):
        for secret in ("the-consumer-secret", "cache-password", "db-password"):
            assert secret not in shown
    assert "tc:***@127.0.0.1" in repr(database)


def test_the_freshness_check_is_the_daemons_not_a_step_of_a_job():
    for job in ("update_memberships_job", "update_progress_job"):
        graph = defs.resolve_job_def(job).asset_layer.asset_graph
        checks = {k.name for k in graph.asset_check_keys}
        assert "freshness_check" not in checks
    progress = defs.resolve_job_def("update_progress_job").asset_layer.asset_graph.asset_check_keys
    assert {k.name for k in progress} >= {"progress_never_decreases", "outbox_drained"}


def test_the_wiring_imports_no_sqlalchemy_and_no_database_module():
    # Assets are thin: SQL lives in the repository, the units of work in steps/.
    import ast

    for path in (ROOT / "partners_dagster" / "defs").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        forbidden = {
            n for n in names if n.startswith("sqlalchemy") or n.endswith(("models", "repository"))
        }
        assert not forbidden, f"{path.name} imports {forbidden}"
