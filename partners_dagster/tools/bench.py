"""``partners-dagster bench``: two nights through the real jobs, measured.

The sandbox runs in its own process (as the real API would be elsewhere); each job runs
in its own process too, as ``dagster job execute`` runs it, so its peak memory is its own.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from sqlalchemy import func, inspect, select

from .. import settings
from ..defs.constants import DEFINITIONS_MODULE, NIGHTLY_JOBS
from ..partners_api.cache import make_cache_backend
from ..partners_api.endpoints import ENDPOINTS, ENROLMENTS_REPORT
from ..partners_api.tokens import TokenSource
from ..sandbox import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, SandboxControl, generate
from ..sandbox.seed import seed_from_dataset
from ..steps.progress_update import ProgressCounts
from ..teachcomputing.engine import make_engine
from ..teachcomputing.migrate import upgrade
from ..teachcomputing.models import OWN, WEBSITE
from ..teachcomputing.repository import TeachComputingRepository
from ..teachcomputing.schema import create_teachcomputing_tables
from .local_instance import local_dagster_home

CONTROL_TOKEN = secrets.token_urlsafe(32)  # for the sandbox's /_sandbox endpoints


def start_sandbox(scale: str, seed: int, latency_ms: float) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "partners_dagster.tools.cli",
        "sandbox",
        "--port",
        "0",
        "--scale",
        scale,
    ]
    command += ["--seed", str(seed), "--latency-ms", str(latency_ms)]
    env = {**os.environ, "PARTNERS_SANDBOX_CONTROL_TOKEN": CONTROL_TOKEN}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:
        if line.startswith("FL_PARTNERS_URL="):
            return process, line.split("=", 1)[1].strip()
    raise RuntimeError("the sandbox did not start")


def run_job(job: str, env: dict[str, str], profile: Path | None = None) -> dict:
    """One job in its own process; wall time and that process's peak resident memory.
    With ``profile``, the process runs under cProfile and writes its statistics there."""
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", "dagster", "job", "execute", "-m", DEFINITIONS_MODULE, "-j", job]
    launched = time.time()
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "ok": process.returncode == 0,
        "launched_at": launched,
        "output_tail": "" if process.returncode == 0 else output[-3000:],
    }


def run_metadata(dagster_home: Path, job: str) -> dict:
    """The newest run of ``job``: its duration and its assets' metadata, from the instance."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records(dg.RunsFilter(job_name=job), limit=1)
        stats = instance.get_run_stats(record.dagster_run.run_id)
        metadata: dict = {}
        progress_counts = None
        for entry in instance.all_logs(
            record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ):
            materialization = entry.asset_materialization
            if "counts" in materialization.metadata:
                progress_counts = ProgressCounts(**materialization.metadata["counts"].value)
            metadata[materialization.asset_key.to_user_string()] = {
                k: v.value
                for k, v in materialization.metadata.items()
                if isinstance(v.value, int | float)
            }
        step_stats = instance.get_run_step_stats(record.dagster_run.run_id)
        steps = {
            step.step_key: round((step.end_time or 0) - (step.start_time or 0), 2)
            for step in step_stats
        }
        first_step = min((s.start_time for s in step_stats if s.start_time), default=None)
    return {
        "run_seconds": round((stats.end_time or 0) - (stats.start_time or 0), 2),
        "steps": steps,
        "first_step_at": first_step,
        "assets": metadata,
        "progress_counts": progress_counts,
    }


def floor(url: str, paths: list[str], concurrency: int) -> float:
    """Download and parse the same responses with bare requests + json, same concurrency."""
    tokens = TokenSource(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET)
    session = requests.Session()
    session.trust_env = False

    def get(path: str) -> None:
        headers = {"Authorization": f"Bearer {tokens.token()}"}
        response = session.get(url + path, headers=headers, timeout=60)
        json.loads(response.content)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(get, paths))
    return round(time.perf_counter() - started, 2)


def floor_paths(
    url: str, database_url: str, known_courses: set[str], concurrency: int
) -> list[str]:
    """What step 1 must download tonight: the runs, every known run's report, and every
    membership on those reports not yet linked."""
    # Renewed as it nears expiry: with added latency this takes longer than a token lives.
    tokens = TokenSource(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET)

    def get(path: str):
        headers = {"Authorization": f"Bearer {tokens.token()}"}
        response = requests.get(url + path, headers=headers, timeout=60)
        response.raise_for_status()
        return response.json()

    runs = get("/partners/course_runs")
    known_runs = [r["uuid"] for r in runs if r["course"]["uuid"] in known_courses]
    engine = make_engine(database_url)
    linked = set(TeachComputingRepository(engine).linked_memberships()["membership_uuid"])
    engine.dispose()
    reports = [f"/partners/course_runs/{run}/course_enrolments_report" for run in known_runs]
    members: set[str] = set()
    with ThreadPoolExecutor(concurrency) as pool:
        for report in pool.map(get, reports):
            members.update(e["organisation_membership"]["uuid"] for e in report)
    paths = ["/partners/course_runs", *reports]
    paths += [f"/partners/organisation_memberships/{m}" for m in sorted(members - linked)]
    return paths


class DatabaseInUseError(RuntimeError):
    """The benchmark's database holds data that is not the benchmark's."""


def prepare_database(engine, dataset, *, force: bool = False) -> None:
    """The website's tables and ours, seeded from ``dataset``. A database that already holds
    the website's tables with rows is refused unless ``force``; then its rows (never its
    tables) are deleted. No table the benchmark did not create is ever dropped."""
    existing = [t for t in WEBSITE.sorted_tables if inspect(engine).has_table(t.name)]
    if existing:
        with engine.connect() as connection:
            rows = {
                t.name: connection.execute(select(func.count()).select_from(t)).scalar_one()
                for t in existing
            }
        holding = [f"{name} ({n} rows)" for name, n in rows.items() if n]
        if holding and not force:
            raise DatabaseInUseError(
                "the database already holds data in "
                + ", ".join(holding[:4])
                + ": benchmark an empty database, or pass --force to delete those rows"
            )
        if len(existing) < len(WEBSITE.tables):
            missing = sorted(set(WEBSITE.tables) - {t.name for t in existing})
            raise DatabaseInUseError(
                f"the database has some of the website's tables but not {', '.join(missing)}"
            )
        upgrade(engine)
        with engine.begin() as connection:
            for table in reversed([*WEBSITE.sorted_tables, *OWN.sorted_tables]):
                connection.execute(table.delete())
    else:
        create_teachcomputing_tables(engine)
        upgrade(engine)
    seed_from_dataset(engine, dataset)


def run_bench(
    scale: str,
    seed: int,
    latency_ms: float,
    database_url: str | None,
    concurrency: int,
    output: Path,
    say: Callable[[str], None] = print,
    *,
    force: bool = False,
    refresh_days: float | None = None,
    profile_dir: Path | None = None,
    with_floor: bool = True,
    changes: str = "realistic",
) -> int:
    workdir = settings.data_dir() / f"bench-{scale}"
    if workdir.exists():
        import shutil

        shutil.rmtree(workdir)
    local_dagster_home(workdir / "dagster_home")
    database_url = database_url or f"sqlite:///{workdir / 'teachcomputing.sqlite3'}"

    dataset = generate(scale, seed)
    engine = make_engine(database_url)
    try:
        prepare_database(engine, dataset, force=force)
    finally:
        engine.dispose()
    known = set(dataset.known_course_uuids)

    sandbox, url = start_sandbox(scale, seed, latency_ms)
    say(
        f"bench: {scale} (seed {seed}), {len(dataset.runs)} runs, {len(dataset.enrolments)} enrolments, "
        f"latency {latency_ms:g} ms, concurrency {concurrency}, steady-night changes {changes}, "
        f"sandbox {url}"
    )
    env = {
        **os.environ,
        "FL_PARTNERS_URL": url,
        "FL_PARTNERS_CONSUMER_KEY": DEFAULT_CONSUMER_KEY,
        "FL_PARTNERS_CONSUMER_SECRET": DEFAULT_CONSUMER_SECRET,
        "FL_PARTNERS_CACHE": str(workdir / "partners_api_cache.sqlite3"),
        "FL_PARTNERS_MAX_CONCURRENCY": str(concurrency),
        "TEACHCOMPUTING_DATABASE_URL": database_url,
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        "PARTNERS_DAGSTER_DATA": str(workdir),
    }
    if refresh_days is not None:
        env["FL_PARTNERS_MEMBERSHIP_REFRESH_DAYS"] = str(refresh_days)
    report: dict = {
        "scale": scale,
        "seed": seed,
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "membership_refresh_days": refresh_days,
        "changes": changes,
        "profiled": profile_dir is not None,
        "database": make_engine(database_url).dialect.name,
        "nights": {},
    }
    failed = False
    try:
        for night in ("first", "steady"):
            if night == "steady":
                advanced = SandboxControl(url, CONTROL_TOKEN).advance(seed + 1, changes=changes)
                say(f"advanced the sandbox one night: {advanced}")
                report["advanced"] = advanced
                expire_answers(workdir / "partners_api_cache.sqlite3")
            results: dict = {"floor": None}
            if with_floor:
                paths = floor_paths(url, database_url, known, concurrency)
                floor_seconds = floor(url, paths, concurrency)
                results["floor"] = {"requests": len(paths), "seconds": floor_seconds}
            for job in NIGHTLY_JOBS:
                SandboxControl(url, CONTROL_TOKEN).reset_stats()
                profile = None
                if profile_dir is not None:
                    profile_dir.mkdir(parents=True, exist_ok=True)
                    profile = profile_dir / f"{night}-{job}.prof"
                measured = run_job(job, env, profile)
                served = SandboxControl(url, CONTROL_TOKEN).stats()
                measured["network_requests"] = served["requests"]
                measured["responses"] = served["responses"]  # "endpoint status": n
                measured["bytes_received"] = served["bytes"]
                if measured["ok"]:
                    measured.update(run_metadata(workdir / "dagster_home", job))
                    if measured["first_step_at"]:
                        # Process start to first step: imports, loading definitions, launch.
                        measured["startup_seconds"] = round(
                            measured["first_step_at"] - measured["launched_at"], 2
                        )
                else:
                    failed = True
                    say(measured["output_tail"])
                results[job] = measured
            report["nights"][night] = results
            say(format_night(night, results, report["nights"].get("first")))
    finally:
        sandbox.kill()
        sandbox.wait()
    output.write_text(json.dumps(report, indent=2, default=str))
    say(f"figures written to {output}")
    return 1 if failed else 0


def expire_answers(cache_path: Path) -> None:
    """A day later: every answer in the response cache is past its 5-hour expiry. They stay,
    as they would, to be revalidated with their ETags."""
    backend = make_cache_backend(str(cache_path))
    try:
        backend.reset_expiration(0)  # expires now
    finally:
        backend.close()


def received(result: dict) -> str:
    """Per endpoint: bytes of the bodies received, and the 200s and 304s."""
    parts = []
    for endpoint in ENDPOINTS:
        statuses = {
            int(key.rsplit(" ", 1)[1]): n
            for key, n in result.get("responses", {}).items()
            if key.rsplit(" ", 1)[0] == endpoint
        }
        if not statuses:
            continue
        counts = " + ".join(f"{n}×{status}" for status, n in sorted(statuses.items()))
        size = result.get("bytes_received", {}).get(endpoint, 0)
        parts.append(f"{endpoint} {counts}, {size / 1e6:.2f} MB")
    return "; ".join(parts)


def format_night(night: str, results: dict, first: dict | None = None) -> str:
    lines = [
        f"\n{night} night",
        f"{'':26}{'wall s':>8}{'run s':>8}{'peak MiB':>10}  network requests / cache hits by endpoint",
    ]
    for job in NIGHTLY_JOBS:
        r = results[job]
        assets = r.get("assets", {})
        hits = {
            "course_runs": assets.get("course_runs", {}).get("api_cache_hits", 0),
            "course_enrolments_report": assets.get("course_enrolments", {}).get(
                "api_cache_hits", 0
            ),
            "organisation_membership": assets.get("organisation_memberships", {}).get(
                "api_cache_hits", 0
            ),
        }
        traffic = ", ".join(
            f"{e} {r['network_requests'].get(e, 0)}/{hits.get(e, 0)}"
            for e in ENDPOINTS
            if r["network_requests"].get(e) or hits.get(e)
        )
        lines.append(
            f"  {job:<24}{r['wall_seconds']:8.1f}{r.get('run_seconds', 0):8.1f}{r['peak_rss_mib']:10.0f}  {traffic or '-'}"
        )
        if r.get("startup_seconds") is not None:
            lines.append(
                f"  {'':24}start-up s (process start to first step): {r['startup_seconds']}"
            )
        if r.get("steps"):
            lines.append(
                f"  {'':24}steps s: " + ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items())
            )
        if r.get("responses"):
            lines.append(f"  {'':24}received: {received(r)}")
        written = _rows_written(assets, r.get("progress_counts"))
        if written:
            lines.append(f"  {'':24}rows: {written}")
    total = sum(results[j]["wall_seconds"] for j in NIGHTLY_JOBS)
    lines.append(f"  {'both jobs':<24}{total:8.1f}")
    if first is not None and first is not results:
        tonight, then = (
            sum(
                results[j].get("bytes_received", {}).get(ENROLMENTS_REPORT, 0) for j in NIGHTLY_JOBS
            ),
            sum(first[j].get("bytes_received", {}).get(ENROLMENTS_REPORT, 0) for j in NIGHTLY_JOBS),
        )
        if then:
            lines.append(
                f"  {'report bytes received':<24}{tonight / 1e6:8.2f} MB, "
                f"{100 * tonight / then:.1f}% of the first night's {then / 1e6:.2f} MB"
            )
    if results["floor"] is not None:
        lines.append(
            f"  {'floor (bare download)':<24}{results['floor']['seconds']:8.1f}  {results['floor']['requests']} requests"
        )
    return "\n".join(lines)


def _rows_written(assets: dict, progress: ProgressCounts | None) -> str:
    parts = []
    if "course_enrolments" in assets:
        parts.append(f"enrolments read {assets['course_enrolments'].get('enrolments', 0)}")
    if "membership_links" in assets:
        parts.append(f"links written {assets['membership_links'].get('memberships_linked', 0)}")
    if progress is not None:
        parts.append(
            f"achievements created {progress.achievements_created}, "
            f"progressed {progress.achievements_progressed}, "
            f"follow-up jobs {progress.follow_up_jobs}"
        )
    return ", ".join(parts)
