"""Where asset values live: in the run's own process, never on disk.

The API assets' values are the API's answers, and ``organisation_memberships`` holds
teachers' emails. Dagster's default IO manager pickles them under ``$DAGSTER_HOME/storage``:
personal data at rest on one pod's disk, which a run in another pod cannot read anyway.
Here a value is kept in memory for the rest of its run (both jobs run in one process), and a
run that needs an upstream value it did not compute (re-materializing one asset from the UI,
in a fresh pod) rebuilds it from where it came from: the API through the response cache
(which then is its storage, shared through Redis across hosts), and the database (the
membership memory for ``organisation_memberships``). Nothing is written, and no API answer is
asked again within the cache's expiry.
"""

import threading
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from ..partners_api.resource import PartnersApiResource
from ..teachcomputing.resource import TeachComputingDatabaseResource

# run id -> asset key -> value. Only the newest run's values are kept: a process runs one
# run at a time, and an old run's values must not pile up in a long-lived process.
_VALUES: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()


_MISSING = object()


def _held(run_id: str, key: str) -> Any:
    """The value ``key`` holds in run ``run_id``, or ``_MISSING``."""
    with _LOCK:
        return _VALUES.get(run_id, {}).get(key, _MISSING)


def _keep(run_id: str, key: str, value: Any) -> None:
    with _LOCK:
        if run_id not in _VALUES:
            _VALUES.clear()  # a new run: the previous run's values are done with
        _VALUES.setdefault(run_id, {})[key] = value


class RebuildingIOManager(dg.ConfigurableIOManager):
    """Keeps asset values in memory for their run; rebuilds a missing upstream value from
    the API (through the response cache) and the database. Writes nothing to disk."""

    partners_api: PartnersApiResource
    teachcomputing_db: TeachComputingDatabaseResource

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:  # assets that write the database and return no value
            return
        _keep(context.run_id, context.asset_key.to_user_string(), obj)

    def load_input(self, context: dg.InputContext) -> Any:
        key = context.asset_key.to_user_string()
        run_id = context.step_context.run_id
        held = _held(run_id, key)
        if held is not _MISSING:
            return held
        context.log.info(f"rebuilding {key} from the response cache and the database")
        return self.rebuild(key, run_id)

    def rebuild(self, key: str, run_id: str) -> Any:
        """The value of asset ``key`` as its run computed it, without its side effects; each
        value rebuilt (upstream ones too) is kept for the rest of the run."""
        held = _held(run_id, key)
        if held is not _MISSING:
            return held
        value = self._compute(key, run_id)
        _keep(run_id, key, value)
        return value

    def _compute(self, key: str, run_id: str) -> Any:
        # The functions the assets call (steps/asset_values.py), without their writes.
        from ..steps import asset_values

        repository = self.teachcomputing_db.repository()
        client = self.partners_api.client
        if key == "course_runs":
            return asset_values.course_runs(
                client, repository, self.partners_api.ignored_courses
            ).frame
        if key == "course_enrolments":
            return asset_values.course_enrolments(
                client, repository, self.rebuild("course_runs", run_id)
            )
        if key == "organisation_memberships":
            # What tonight's run asked and remembered: every answer is in the memory.
            return asset_values.organisation_memberships(
                client,
                repository,
                self.rebuild("course_enrolments", run_id),
                now=datetime.now(UTC),
                refresh_days=None,
                dagster_run_id=run_id,
                record=False,
                ask_api=False,
            ).memberships
        if key == "latest_enrolments":
            return asset_values.latest_enrolments(
                repository, self.rebuild("course_enrolments", run_id)
            )
        raise KeyError(f"no way to rebuild asset {key!r}")
