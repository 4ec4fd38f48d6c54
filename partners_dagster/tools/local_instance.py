"""A local Dagster home for the demo, the UI, the benchmark and the tests: one definition of
its instance file and of the workspace that names this code location."""

from __future__ import annotations

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
