"""The one-command demo on the embedded defaults: sandbox API, SQLite, a local Dagster home."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import settings
from ..defs.constants import NIGHTLY_JOBS, PROGRESS_JOB
from ..sandbox import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    SandboxApi,
    SandboxServer,
    generate,
)
from ..sandbox.seed import seed_from_dataset
from ..steps.progress_update import ProgressCounts
from ..teachcomputing.engine import make_engine, read_only
from ..teachcomputing.migrate import upgrade
from ..teachcomputing.repository import TeachComputingRepository
from ..teachcomputing.schema import create_teachcomputing_tables
from .local_instance import local_dagster_home, run_until_stopped, write_workspace


@dataclass
class Embedded:
    server: SandboxServer
    data_dir: Path
    database_url: str
    env: dict[str, str]


def prepare(scale: str, seed: int, say: Callable[[str], None]) -> Embedded:
    """Fresh SQLite database and cache under the data folder, seeded to match a sandbox started
    on a free loopback port; the environment the jobs need is set in this process."""
    data_dir = settings.data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in [
        *data_dir.glob("teachcomputing.sqlite3*"),
        *data_dir.glob("partners_api_cache.sqlite3*"),
    ]:
        stale.unlink()
    dagster_home = local_dagster_home(data_dir / "dagster_home")

    started = time.perf_counter()
    dataset = generate(scale, seed)
    server = SandboxServer(SandboxApi(dataset)).start()
    say(
        f"sandbox API ({scale}, seed {seed}) on {server.url}: {len(dataset.runs)} runs, "
        f"{len(dataset.enrolments)} enrolments ({time.perf_counter() - started:.1f}s)"
    )
    database_url = settings.default_database_url()
    engine = make_engine(database_url)
    create_teachcomputing_tables(engine)
    upgrade(engine)
    counts = seed_from_dataset(engine, dataset)
    engine.dispose()
    say(
        f"database {database_url}: the website's tables created, ours migrated, "
        f"seeded with {counts['users']} users, {counts['activities']} activities"
    )
    env = {
        "FL_PARTNERS_URL": server.url,
        "FL_PARTNERS_CONSUMER_KEY": DEFAULT_CONSUMER_KEY,
        "FL_PARTNERS_CONSUMER_SECRET": DEFAULT_CONSUMER_SECRET,
        "TEACHCOMPUTING_DATABASE_URL": database_url,
        "FL_PARTNERS_CACHE": settings.default_cache_location(),
        "PARTNERS_DAGSTER_DATA": str(data_dir),
        "DAGSTER_HOME": str(dagster_home),
    }
    os.environ.update(env)
    return Embedded(server, data_dir, database_url, env)


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_night(say: Callable[[str], None]) -> tuple[dict, dict]:
    """Both jobs, in order, on the local Dagster instance; stops at the first failure."""
    import dagster as dg

    from ..definitions import build_definitions

    defs = build_definitions()
    instance = dg.DagsterInstance.get()
    results, timings = {}, {}
    for job in NIGHTLY_JOBS:
        say(f"running {job} ...")
        started = time.perf_counter()
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, run_config=QUIET, raise_on_error=False
        )
        timings[job], results[job] = time.perf_counter() - started, result
        say(
            f"  {'succeeded' if result.success else 'FAILED'} in {timings[job]:.1f}s (run {result.run_id})"
        )
        if not result.success:
            for event in result.all_events:
                if event.is_failure:
                    say(f"  {event.message}")
            break
    return results, timings


def run_demo(scale: str, seed: int, say: Callable[[str], None] = print) -> int:
    embedded = prepare(scale, seed, say)
    try:
        results, timings = run_night(say)
    finally:
        embedded.server.stop()
    if len(results) < len(NIGHTLY_JOBS) or not all(r.success for r in results.values()):
        return 1
    say("")
    say(summary(embedded, results, timings))
    return 0


def summary(embedded: Embedded, results: dict, timings: dict) -> str:
    engine = make_engine(embedded.database_url)
    repository = TeachComputingRepository(engine)
    links = len(repository.linked_memberships())
    with read_only(engine) as connection:
        # A state is the most recent transition's to_state, `enrolled` when there is none.
        states = pd.read_sql_query(
            "SELECT coalesce(t.to_state, 'enrolled') AS state, count(*) AS n FROM achievements a "
            "LEFT JOIN achievement_transitions t ON t.achievement_id = a.id AND t.most_recent "
            "GROUP BY coalesce(t.to_state, 'enrolled') ORDER BY 1",
            connection,
        )
    jobs = repository.outbox().groupby("job_class").size()
    engine.dispose()
    lines = ["Summary", f"  memberships linked: {links}", "  achievements by state:"]
    lines += [f"    {row.state:<12} {row.n}" for row in states.itertuples()]
    lines.append("  follow-up jobs in the outbox:")
    lines += [f"    {job_class:<36} {n}" for job_class, n in jobs.items()] or ["    none"]
    progress = progress_counts(results.get(PROGRESS_JOB))
    if progress is not None:
        lines.append(
            f"  tonight: {progress.achievements_created} achievements created, "
            f"{progress.achievements_progressed} progressed, {progress.moved_to_complete} completed, "
            f"{progress.follow_up_jobs} follow-up jobs queued"
        )
    lines.append("  per step:                  wall s   network requests   cache hits")
    for job, result in results.items():
        network = cache = 0
        for event in result.get_asset_materialization_events():
            metadata = event.materialization.metadata
            network += (
                metadata["api_network_requests"].value if "api_network_requests" in metadata else 0
            )
            cache += metadata["api_cache_hits"].value if "api_cache_hits" in metadata else 0
        lines.append(f"    {job:<24} {timings[job]:6.1f}   {network:16d}   {cache:10d}")
    return "\n".join(lines)


def progress_counts(result) -> ProgressCounts | None:
    """The typed counts ``achievement_progress`` recorded in its materialization."""
    if result is None:
        return None
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == "achievement_progress":
            return ProgressCounts(**event.materialization.metadata["counts"].value)
    return None


def run_ui(scale: str, seed: int, port: int, say: Callable[[str], None] = print) -> int:
    """The demo's setup and runs, then ``dagster dev`` on it, with the sandbox still serving."""
    embedded = prepare(scale, seed, say)
    try:
        run_night(say)
        say(f"\nDagster UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
        # The same code location name as the repository's workspace.yaml.
        workspace = write_workspace(embedded.data_dir / "dagster_home" / "workspace.yaml")
        command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace)]
        # Stops on Ctrl-C and on SIGTERM, dagster dev's whole session with it.
        return run_until_stopped(
            [*command, "-h", "127.0.0.1", "-p", str(port)], env={**os.environ, **embedded.env}
        )
    except KeyboardInterrupt:
        return 0
    finally:
        embedded.server.stop()
