"""A local Dagster home for the demo, the UI, the benchmark and the tests: one definition of
its instance file and of the workspace that names this code location."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from ..defs.constants import CODE_LOCATION, DEFINITIONS_MODULE

INSTANCE_YAML = """\
# A local Dagster instance: SQLite storage in this folder, no telemetry, and the guard rails
# of the production instance (dagster.yaml) for the runs the UI launches: one run at a time
# holds the night's pool or the API tag, a maximum run time, and run monitoring.
concurrency:
  runs:
    tag_concurrency_limits:
      - key: partners_dagster/partners_api
        limit: 1
  pools:
    granularity: run
    default_limit: 1
run_monitoring:
  enabled: true
  max_runtime_seconds: 10800
  poll_interval_seconds: 30
telemetry:
  enabled: false
"""

WORKSPACE_YAML = f"""\
load_from:
  - python_module:
      module_name: {DEFINITIONS_MODULE}
      attribute: defs
      location_name: {CODE_LOCATION}
"""


def local_dagster_home(path: Path) -> Path:
    """``path`` made a Dagster home with the local instance file; returns it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(INSTANCE_YAML)
    return path


def write_workspace(path: Path) -> Path:
    """The workspace file (the same as the repository's ``workspace.yaml``) at ``path``."""
    path.write_text(WORKSPACE_YAML)
    return path


# How long `dagster dev` may take to stop its webserver, daemon and code servers after SIGINT
# before what is left of its session is killed.
STOP_GRACE_SECONDS = 30.0
# After SIGKILL: how long to wait for the killed processes to be gone (the kernel ends them
# when they are next scheduled, which on a busy machine is not at once).
KILLED_GONE_SECONDS = 5.0


def run_until_stopped(command: list[str], env: dict[str, str]) -> int:
    """Runs ``command`` (``dagster dev``) until it exits or this process is told to stop,
    by Ctrl-C (SIGINT) or SIGTERM (a service manager, ``kill``, a container stop). Either way
    ``dagster dev`` gets SIGINT, which stops its webserver, daemon and code servers in order;
    whatever of its session is still there after ``STOP_GRACE_SECONDS`` is killed. Returns
    its exit status, 0 when it was told to stop."""
    stop_asked: list[int] = []
    started: list[subprocess.Popen] = []

    def ask_to_stop(signum: int, _frame: object) -> None:
        stop_asked.append(signum)
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)

    # Handled here before the start: a handled signal is back to its default in the new
    # program, while an ignored one stays ignored. Started in the background by a script,
    # this process has SIGINT ignored, and dagster dev, which makes SIGTERM do what SIGINT
    # does, would then ignore both.
    previous = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A session of its own: a Ctrl-C in the terminal reaches it once, from here.
        process = subprocess.Popen(command, env=env, start_new_session=True)
        started.append(process)
        if stop_asked:  # asked before it started
            ask_to_stop(stop_asked[0], None)
        while not stop_asked:
            try:
                return process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_GRACE_SECONDS)
        # dagster dev's children share its session; none may outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        _wait_until_group_is_gone(process.pid, KILLED_GONE_SECONDS)
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_until_group_is_gone(pgid: int, seconds: float) -> None:
    """Returns once no process of the group ``pgid`` is left (a zombie not yet reaped by
    init still counts), or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
