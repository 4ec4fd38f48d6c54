"""A night on real parts: the sandbox API on loopback, a migrated and seeded database, and a
temporary Dagster instance running the real jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from sqlalchemy import inspect

from partners_dagster.definitions import build_definitions
from partners_dagster.partners_api.resource import PartnersApiResource
from partners_dagster.sandbox import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    SandboxApi,
    SandboxDataset,
    SandboxServer,
)
from partners_dagster.sandbox.seed import seed_from_dataset
from partners_dagster.sidekiq.resource import SidekiqResource
from partners_dagster.teachcomputing.engine import make_engine
from partners_dagster.teachcomputing.migrate import upgrade
from partners_dagster.teachcomputing.repository import TeachComputingRepository
from partners_dagster.teachcomputing.resource import TeachComputingDatabaseResource
from partners_dagster.teachcomputing.schema import create_teachcomputing_tables
from partners_dagster.tools.local_instance import local_dagster_home

GLOBALID_APP = "teach-computing"
PROGRAMME_TYPES = {
    "primary-certificate": "Programmes::PrimaryCertificate",
    "secondary-certificate": "Programmes::SecondaryCertificate",
    "cs-accelerator": "Programmes::CSAccelerator",
}


def create_test_views(engine) -> None:
    """Views for the tests' queries only: an achievement with its statesman state (the most
    recent transition's to_state, enrolled with none), and each transition with the state
    it moved from."""
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE VIEW achievements_with_state AS SELECT a.*, "
            "coalesce(t.to_state, 'enrolled') AS current_state FROM achievements a "
            "LEFT JOIN achievement_transitions t ON t.achievement_id = a.id AND t.most_recent"
        )
        connection.exec_driver_sql(
            "CREATE VIEW transitions_with_from AS SELECT t.*, LAG(t.to_state, 1, 'enrolled') "
            "OVER (PARTITION BY t.achievement_id ORDER BY t.sort_key) AS from_state "
            "FROM achievement_transitions t"
        )


class Night:
    def __init__(
        self,
        dataset: SandboxDataset,
        workdir: Path,
        *,
        database_url: str | None = None,
        ignored_course_uuids: str = "",
        cache: bool = True,
        sidekiq_redis_url: str | None = None,
        **api_options,
    ):
        self.dataset = dataset
        self.server = SandboxServer(SandboxApi(dataset)).start()
        self.database_url = database_url or f"sqlite:///{workdir / 'teachcomputing.sqlite3'}"
        self.engine = make_engine(self.database_url)
        if not inspect(self.engine).has_table("users"):
            create_teachcomputing_tables(self.engine)
        upgrade(self.engine)
        seed_from_dataset(self.engine, dataset)
        create_test_views(self.engine)
        self.cache_path = workdir / "partners_api_cache.sqlite3"
        self.resources = {
            "partners_api": PartnersApiResource(
                base_url=self.server.url,
                consumer_key=DEFAULT_CONSUMER_KEY,
                consumer_secret=DEFAULT_CONSUMER_SECRET,
                cache=str(self.cache_path) if cache else "",
                ignored_course_uuids=ignored_course_uuids,
                **{"max_attempts": 3, "backoff_initial_seconds": 0.01, **api_options},
            ),
            "teachcomputing_db": TeachComputingDatabaseResource(database_url=self.database_url),
            "sidekiq": SidekiqResource(redis_url=sidekiq_redis_url, globalid_app=GLOBALID_APP),
        }
        self.defs = build_definitions(self.resources)
        self._dagster_home = tempfile.TemporaryDirectory(dir=workdir)
        # A real instance, its event log in Dagster's own in-memory storage: the on-disk
        # SQLite one opens a connection and commits for every event, about half of each run.
        # (Spawned jobs and the deployment test use on-disk instances.)
        self._instance_cm = dg.instance_for_test(
            temp_dir=self._dagster_home.name,
            overrides={
                "event_log_storage": {
                    "module": "dagster._core.storage.event_log",
                    "class": "InMemoryEventLogStorage",
                }
            },
        )
        self.instance = self._instance_cm.__enter__()

    @property
    def api(self) -> SandboxApi:
        return self.server.api

    def run(self, job_name: str, *, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(job_name).execute_in_process(
            instance=self.instance, raise_on_error=raise_on_error
        )

    def both_steps(self) -> tuple[dg.ExecuteInProcessResult, dg.ExecuteInProcessResult]:
        return self.run("update_memberships_job"), self.run("update_progress_job")

    def query(self, sql: str) -> pd.DataFrame:
        with self.engine.connect() as connection:
            return pd.read_sql_query(sql, connection)

    def repository(self) -> TeachComputingRepository:
        return TeachComputingRepository(self.engine)

    def state(self) -> dict[str, pd.DataFrame]:
        """The database's meaning, free of ids, timestamps and run ids that differ between
        equivalent nights: what two nights must agree on."""
        # Every array entry: a membership in two arrays, or twice in one, shows as a row.
        links = self.repository().membership_array_entries()
        link_rows = self.query(
            "SELECT membership_uuid, user_id, matched_by FROM partners_dagster_membership_links"
        )
        achievements = self.query(
            "SELECT a.user_id, a.activity_id, a.programme_id, a.progress, "
            "coalesce(t.to_state, 'enrolled') AS state FROM achievements a "
            "LEFT JOIN achievement_transitions t ON t.achievement_id = a.id AND t.most_recent"
        )
        transitions = self.query(
            "SELECT a.user_id, a.activity_id, t.to_state, t.sort_key, t.most_recent, t.metadata "
            "FROM achievement_transitions t JOIN achievements a ON a.id = t.achievement_id"
        )
        transitions["metadata"] = transitions["metadata"].map(_without_run_id)
        transitions["most_recent"] = transitions["most_recent"].astype(bool)
        outbox = self.repository().outbox()
        keys = self.achievement_keys()
        jobs = pd.DataFrame(
            {
                "job_class": outbox["job_class"],
                # Achievement ids differ between equivalent nights: name them by user/activity.
                "arguments": [
                    json.dumps(_json(arguments), sort_keys=True).replace(
                        str(achievement_id), keys.get(str(achievement_id), "?")
                    )
                    for arguments, achievement_id in zip(
                        outbox["arguments"], outbox["achievement_id"], strict=True
                    )
                ],
                "run_at_offset": (outbox["run_at"] - outbox["created_at"])
                .dt.total_seconds()
                .round(),
            }
        )
        frames = {
            "links": links,
            "link_rows": link_rows,
            "achievements": achievements,
            "transitions": transitions,
            "outbox": jobs,
        }
        # PostgreSQL hands back uuid.UUID objects where SQLite has text.
        frames = {
            name: f.map(lambda v: str(v) if isinstance(v, uuid.UUID) else v)
            for name, f in frames.items()
        }
        return {
            name: f.sort_values(list(f.columns), ignore_index=True) for name, f in frames.items()
        }

    def every_row(self) -> dict[str, list[str]]:
        """Every row of every table, ours and the website's, sorted: what a night that must
        write nothing has to leave exactly as it was."""
        from sqlalchemy import text

        tables = {}
        with self.engine.connect() as connection:
            for name in sorted(inspect(self.engine).get_table_names()):
                rows = connection.execute(text(f'SELECT * FROM "{name}"')).all()
                tables[name] = sorted(repr(tuple(row)) for row in rows)
        return tables

    def achievement_keys(self) -> dict[str, str]:
        """Achievement id -> "user/activity": ids differ between equivalent nights."""
        frame = self.query("SELECT id, user_id, activity_id FROM achievements")
        return {str(i): f"{u}/{a}" for i, u, a in frame.itertuples(index=False)}

    def environment(self, dagster_home: Path) -> dict[str, str]:
        """The environment a deployed process would run this night with."""
        api = self.resources["partners_api"]
        local_dagster_home(dagster_home)
        return {
            **os.environ,
            "FL_PARTNERS_URL": self.server.url,
            "FL_PARTNERS_CONSUMER_KEY": api.consumer_key,
            "FL_PARTNERS_CONSUMER_SECRET": api.consumer_secret,
            "FL_PARTNERS_CACHE": api.cache,
            "TEACHCOMPUTING_DATABASE_URL": self.database_url,
            "DAGSTER_HOME": str(dagster_home),
        }

    def spawn(self, job_name: str, dagster_home: Path, **overrides: str) -> subprocess.Popen:
        """The job in its own process, as `dagster job execute` runs it from the command line;
        ``overrides`` replace variables of ``environment`` (e.g. FL_PARTNERS_CACHE)."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "job",
                "execute",
                "-m",
                "partners_dagster.definitions",
                "-j",
                job_name,
            ],
            env={**self.environment(dagster_home), **overrides},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def close(self) -> None:
        self._instance_cm.__exit__(None, None, None)
        self.server.stop()
        self.engine.dispose()


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _without_run_id(value) -> str:
    metadata = dict(_json(value))
    metadata.pop("dagster_run_id", None)
    return json.dumps(metadata, sort_keys=True)


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = [
        e
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == asset
    ]
    return {key: value.value for key, value in event.materialization.metadata.items()}


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


# -- hand-made datasets for behaviour tests ---------------------------------------------------


def _id(kind: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"partners-dagster-test/{kind}/{name}"))


def epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


class Scenario:
    """Builds a ``SandboxDataset`` by name: courses, runs, users, memberships, enrolments."""

    def __init__(self) -> None:
        self.programmes = ["primary-certificate", "secondary-certificate", "cs-accelerator"]
        self.courses: list[dict] = []
        self.runs: list[dict] = []
        self.users: list[dict] = []
        self.memberships: list[dict] = []
        self.enrolments: list[dict] = []
        self.programme_enrolments: list[dict] = []

    def id(self, kind: str, name: str) -> str:
        return _id(kind, name)

    def course(
        self,
        name: str,
        *,
        programmes: tuple[str, ...] = (),
        known: bool = True,
        credit: float | None = 10.0,
        category: str | None = None,
    ) -> str:
        self.courses.append(
            {
                "name": name,
                "programmes": programmes,
                "known": known,
                "credit": credit,
                "category": category,
            }
        )
        return _id("course", name)

    def run(self, name: str, course: str) -> str:
        self.runs.append({"name": name, "course": course})
        return _id("run", name)

    def user(self, name: str, email: str | None = "", *, forgotten: bool = False) -> str:
        """A user; ``email=None`` makes one without an email (the default is name@…)."""
        email = f"{name}@school.example.org" if email == "" else email
        self.users.append({"name": name, "email": email, "forgotten": forgotten})
        return _id("user", name)

    def membership(self, name: str, external_learner_id: str | None, *, found: bool = True) -> str:
        self.memberships.append({"name": name, "external": external_learner_id, "found": found})
        return _id("membership", name)

    def enrol(
        self,
        run: str,
        membership: str,
        activated: str | None,
        ratio: float,
        *,
        left: str | None = None,
    ) -> None:
        self.enrolments.append(
            {
                "run": run,
                "membership": membership,
                "activated": activated,
                "ratio": ratio,
                "left": left,
            }
        )

    def on_programme(
        self, user: str, programme: str, since: str, *, state: str | None = None
    ) -> None:
        """A programme enrolment; ``state`` adds one statesman transition (e.g. unenrolled)."""
        self.programme_enrolments.append(
            {"user": user, "programme": programme, "since": since, "state": state}
        )

    def build(self) -> SandboxDataset:
        run_names = [r["name"] for r in self.runs]
        membership_names = [m["name"] for m in self.memberships]
        course_by_name = {c["name"]: c for c in self.courses}
        programme_ids = {slug: _id("programme", slug) for slug in self.programmes}
        activities = [c for c in self.courses if c["known"]]
        return SandboxDataset(
            scale="scenario",
            seed=0,
            courses=pd.DataFrame(
                {
                    "course_uuid": [_id("course", c["name"]) for c in self.courses],
                    "title": [f"Course {c['name']}" for c in self.courses],
                    "known": [c["known"] for c in self.courses],
                    "steps": 100,
                }
            ),
            runs=pd.DataFrame(
                {
                    "run_uuid": [_id("run", r["name"]) for r in self.runs],
                    "course_uuid": [_id("course", r["course"]) for r in self.runs],
                    "title": [f"Course {r['course']}" for r in self.runs],
                    "full_code": None,
                    "code": None,
                    "start_time": epoch("2027-01-04T00:00:00"),
                    "weeks_count": 3,
                }
            ),
            memberships=pd.DataFrame(
                {
                    "membership_uuid": [_id("membership", m["name"]) for m in self.memberships],
                    "learner": range(len(self.memberships)),
                    "learner_uuid": [_id("learner", m["name"]) for m in self.memberships],
                    "external_learner_id": [m["external"] for m in self.memberships],
                    "kind": "scenario",
                    "found": [m["found"] for m in self.memberships],
                }
            ),
            enrolments=self._enrolments(run_names, membership_names),
            users=pd.DataFrame(
                {
                    "id": [_id("user", u["name"]) for u in self.users],
                    "email": [u["email"] for u in self.users],
                    "forgotten": [u["forgotten"] for u in self.users],
                    "created_at": pd.Timestamp("2020-01-01", tz="UTC"),
                }
            ),
            activities=pd.DataFrame(
                {
                    "id": [_id("activity", c["name"]) for c in activities],
                    "title": [f"Course {c['name']}" for c in activities],
                    "future_learn_course_uuid": [_id("course", c["name"]) for c in activities],
                    "credit": [c["credit"] for c in activities],
                    "category": [c["category"] for c in activities],
                }
            ),
            programmes=pd.DataFrame(
                {
                    "id": list(programme_ids.values()),
                    "slug": self.programmes,
                    "title": self.programmes,
                    "type": [PROGRAMME_TYPES.get(slug) for slug in self.programmes],
                }
            ),
            programme_activities=pd.DataFrame(
                [
                    {
                        "id": _id("programme_activity", f"{p}/{c['name']}"),
                        "programme_id": programme_ids[p],
                        "activity_id": _id("activity", c["name"]),
                    }
                    for c in activities
                    for p in course_by_name[c["name"]]["programmes"]
                ],
                columns=["id", "programme_id", "activity_id"],
            ),
            user_programme_enrolments=pd.DataFrame(
                {
                    "id": [
                        _id("upe", f"{e['user']}/{e['programme']}")
                        for e in self.programme_enrolments
                    ],
                    "user_id": [_id("user", e["user"]) for e in self.programme_enrolments],
                    "programme_id": [
                        programme_ids[e["programme"]] for e in self.programme_enrolments
                    ],
                    "created_at": pd.to_datetime(
                        [e["since"] for e in self.programme_enrolments], utc=True
                    ),
                }
            ),
            user_programme_enrolment_transitions=pd.DataFrame(
                [
                    {
                        "user_programme_enrolment_id": _id("upe", f"{e['user']}/{e['programme']}"),
                        "to_state": e["state"],
                        "sort_key": 10,
                        "most_recent": True,
                        "created_at": pd.Timestamp(e["since"], tz="UTC") + pd.Timedelta(days=1),
                    }
                    for e in self.programme_enrolments
                    if e["state"]
                ],
                columns=[
                    "user_programme_enrolment_id",
                    "to_state",
                    "sort_key",
                    "most_recent",
                    "created_at",
                ],
            ),
        )

    def _enrolments(self, run_names: list[str], membership_names: list[str]) -> pd.DataFrame:
        rows = self.enrolments
        return pd.DataFrame(
            {
                "run": np.array([run_names.index(e["run"]) for e in rows], dtype=np.int64),
                "membership": np.array(
                    [membership_names.index(e["membership"]) for e in rows], dtype=np.int64
                ),
                "deactivated": [e["left"] is not None for e in rows],
                "activated_at": np.array(
                    [epoch(e["activated"]) if e["activated"] else -1 for e in rows], dtype=np.int64
                ),
                "deactivated_at": np.array(
                    [epoch(e["left"]) if e["left"] else -1 for e in rows], dtype=np.int64
                ),
                "steps_completed_count": np.array(
                    [round(e["ratio"] * 100) for e in rows], dtype=np.int64
                ),
                "steps_completed_ratio": np.array([e["ratio"] for e in rows], dtype=np.float64),
            }
        )

    def rebuild_enrolments(self, dataset: SandboxDataset) -> None:
        """Serve this scenario's (changed) enrolments from the running sandbox."""
        dataset.enrolments = self._enrolments(
            [r["name"] for r in self.runs], [m["name"] for m in self.memberships]
        )
        dataset.reindex()


def check_metadata(result: dg.ExecuteInProcessResult, check_name: str) -> dict:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == check_name]
    return {key: value.value for key, value in evaluation.metadata.items()}
