"""The benchmark is not a test; this keeps it working, at the tiny scale."""

from __future__ import annotations

import json
import subprocess
import sys


def _bench_tiny(tmp_path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``partners-dagster bench --scale tiny`` with ``options``; it must succeed."""
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "partners_dagster.tools.cli", "bench", "--scale", "tiny"]
    result = subprocess.run(
        [*command, *options, "--output", str(output)],
        env={"PATH": "/usr/bin:/bin", "PARTNERS_DAGSTER_DATA": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(output.read_text())


def test_bench_runs_two_nights_and_writes_its_figures(tmp_path):
    result, report = _bench_tiny(tmp_path)
    assert (
        "first night" in result.stdout
        and "steady night" in result.stdout
        and "floor" in result.stdout
    )
    first, steady = report["nights"]["first"], report["nights"]["steady"]
    for night in (first, steady):
        for job in ("update_memberships_job", "update_progress_job"):
            assert (
                night[job]["ok"]
                and night[job]["wall_seconds"] > 0
                and night[job]["peak_rss_mib"] > 50
            )
        # Step 2 reads through step 1's cache: no network request at all.
        assert sum(night["update_progress_job"]["network_requests"].values()) == 0
        assert night["floor"]["requests"] > 0
    assert first["update_memberships_job"]["assets"]["membership_links"]["memberships_linked"] > 0
    assert (
        steady["update_memberships_job"]["assets"]["membership_links"]["memberships_linked"] > 0
    )  # new learners
    assert (
        steady["update_progress_job"]["assets"]["achievement_progress"]["achievements_progressed"]
        > 0
    )
    # The realistic steady night (the default): the cache expired a day ago and is
    # revalidated; only the few reports of recent runs that changed come whole.
    assert report["changes"] == "realistic" and report["advanced"]["model"] == "realistic"
    first_step_1, steady_step_1 = first["update_memberships_job"], steady["update_memberships_job"]
    assert first_step_1["responses"]["course_enrolments_report 200"] > 0
    assert steady_step_1["responses"]["course_runs 304"] == 1
    unchanged = steady_step_1["responses"]["course_enrolments_report 304"]
    changed = steady_step_1["responses"].get("course_enrolments_report 200", 0)
    assert unchanged > changed
    assert (
        steady_step_1["bytes_received"]["course_enrolments_report"]
        < 0.5 * first_step_1["bytes_received"]["course_enrolments_report"]
    )
    assert "304" in result.stdout and "of the first night's" in result.stdout


def test_bench_profiles_each_job_and_can_skip_the_floor(tmp_path):
    profiles = tmp_path / "profiles"
    result, report = _bench_tiny(
        tmp_path, "--no-floor", "--profile", str(profiles), "--changes", "uniform"
    )
    assert "floor (bare download)" not in result.stdout
    assert report["changes"] == "uniform" and report["advanced"]["model"] == "uniform"
    assert report["profiled"] is True
    assert all(night["floor"] is None for night in report["nights"].values())
    assert sorted(p.name for p in profiles.iterdir()) == [
        "first-update_memberships_job.prof",
        "first-update_progress_job.prof",
        "steady-update_memberships_job.prof",
        "steady-update_progress_job.prof",
    ]
