"""The Dagster UI as the on-call operator sees it, in a real browser (issue 24).

One ``partners-dagster ui --scale tiny`` for the module (the demo's setup and runs, then
``dagster dev`` with its daemon), driven by Playwright for Python through Debian's
``chromium`` (Playwright's own browser download is not used). Runs are launched through the
webserver's GraphQL, as the UI's buttons launch them. The last test stops the UI with SIGTERM.
Screenshots of each page land in ``$PARTNERS_DAGSTER_SCREENSHOTS`` when it is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from partners_dagster.sandbox import DEFAULT_CONSUMER_SECRET

from .contract import ASSET_NAMES

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
LOCATION = "partners_dagster"
# A run's config that replaces the API resource's names the credentials' variables, as the
# Launchpad would, never their values.
CREDENTIALS = {
    "consumer_key": {"env": "FL_PARTNERS_CONSUMER_KEY"},
    "consumer_secret": {"env": "FL_PARTNERS_CONSUMER_SECRET"},
}
START_SECONDS = 300  # the demo's setup and two runs, then dagster dev, on a busy 2-core machine
RUN_SECONDS = 180
UI_COMMAND = [sys.executable, "-m", "partners_dagster.tools.cli", "ui", "--scale", "tiny"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None,
    reason="Debian's chromium is not installed: sudo bash scripts/install_test_services.sh",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ui:
    """``partners-dagster ui`` in its own process, and its webserver's GraphQL."""

    def __init__(self, data_dir: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (data_dir / "ui.log").open("w")
        env = {**os.environ, "PARTNERS_DAGSTER_DATA": str(data_dir)}
        for name in ("SENTRY_DSN", "SLACK_BOT_TOKEN", "SLACK_CHANNEL", "DAGSTER_HOME"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            [*UI_COMMAND, "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.dagster_home = data_dir / "dagster_home"

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_text()
            try:
                urllib.request.urlopen(f"{self.url}/server_info", timeout=2)
                # The location is loaded once the assets answer.
                if "course_runs" in json.dumps(self.graphql("{ assetNodes { id } }")):
                    return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"the UI did not start in {START_SECONDS} s:\n{self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        assert "errors" not in body, body
        return body["data"]

    def launch(
        self, job: str, *, assets: list[str] | None = None, run_config: dict | None = None
    ) -> str:
        """A run launched as the UI launches it: the Launchpad for a job, "Materialize" or
        "Materialize all" (``__ASSET_JOB`` with an asset selection) for assets."""
        selector = {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "pipelineName": job,
        }
        if assets is not None:
            selector["assetSelection"] = [{"path": [a]} for a in assets]
        data = self.graphql(
            """mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) {
                __typename ... on LaunchRunSuccess { run { runId } }
                ... on PythonError { message } ... on InvalidSubsetError { message }
                ... on RunConfigValidationInvalid { errors { message } } } }""",
            {"p": {"selector": selector, "runConfigData": run_config or {}, "mode": "default"}},
        )["launchPipelineExecution"]
        assert data["__typename"] == "LaunchRunSuccess", data
        return data["run"]["runId"]

    def status(self, run_id: str) -> str:
        data = self.graphql(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id}
        )
        return data["runOrError"]["status"]

    def wait_for(self, run_id: str, statuses: set[str], seconds: float = RUN_SECONDS) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status in statuses:
                return status
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} still {self.status(run_id)}:\n{self.log_text()}")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    ui = Ui(tmp_path_factory.mktemp("ui"))
    try:
        ui.wait_until_serving()
        # A new local user is greeted by a "join the community" dialog; record it as seen.
        ui.graphql("mutation { setNuxSeen }")
        yield ui
    finally:
        if ui.process.poll() is None:
            os.kill(ui.process.pid, signal.SIGTERM)
            try:
                ui.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                ui.process.kill()
        ui.log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Every page a test visited, and its text, for the privacy test at the end.
VISITED: dict[str, str] = {}


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    yield page
    page.close()


def visit(page, url: str, name: str, wait_for_text: str) -> str:
    page.goto(url)
    page.get_by_text(wait_for_text).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # let the graph lay out and the last queries land
    text = page.inner_text("body")
    VISITED[url] = page.content() + text
    shots = os.environ.get("PARTNERS_DAGSTER_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=True)
    return text


def test_the_asset_graph_shows_all_seven_assets(ui, page):
    visit(page, f"{ui.url}/asset-groups/futurelearn_partners", "asset-graph", "follow_up_jobs")
    for asset in ASSET_NAMES:
        assert page.get_by_text(asset, exact=True).first.is_visible(), asset


def test_a_failing_run_reads_as_one_line(ui, page):
    closed = _free_port()
    run_id = ui.launch(
        "update_memberships_job",
        run_config={
            "resources": {
                "partners_api": {
                    "config": {
                        "base_url": f"http://127.0.0.1:{closed}",
                        **CREDENTIALS,
                        "cache": "",
                        "max_attempts": 3,
                        "backoff_initial_seconds": 0.2,
                    }
                }
            }
        },
    )
    assert ui.wait_for(run_id, {"FAILURE", "SUCCESS", "CANCELED"}) == "FAILURE"
    text = visit(page, f"{ui.url}/runs/{run_id}", "failed-run", "unreachable after 3 attempts")
    lines = [line for line in text.splitlines() if "Partners API course_runs: unreachable" in line]
    # The step's failure and the run's: each says what failed, how, and what to check in one
    # line (the run's stack trace follows it, below its first line).
    assert lines
    for line in lines:
        assert "Last error: ConnectionError" in line, line
        assert "FL_PARTNERS_URL" in line and "FL_PARTNERS_CONSUMER_SECRET" in line, line
    # The retries were logged while they happened.
    assert "attempt 1 failed" in text and "attempt 2 failed" in text


def test_runs_launched_from_the_ui_wait_for_the_one_calling_the_api(ui):
    slow = ui.launch(
        "update_memberships_job",
        run_config={
            "resources": {
                "partners_api": {
                    "config": {
                        "base_url": f"http://127.0.0.1:{_free_port()}",
                        **CREDENTIALS,
                        "cache": "",
                        "max_attempts": 4,
                        "backoff_initial_seconds": 3.0,
                    }
                }
            }
        },
    )
    ui.wait_for(slow, {"STARTED"})
    # "Materialize" on an asset page, and "Materialize all": no job tag, the same pool.
    one = ui.launch("__ASSET_JOB", assets=["course_runs"])
    everything = ui.launch("__ASSET_JOB", assets=list(ASSET_NAMES))
    time.sleep(5)
    assert ui.status(slow) == "STARTED"
    assert (ui.status(one), ui.status(everything)) == ("QUEUED", "QUEUED")
    assert ui.wait_for(slow, {"FAILURE", "SUCCESS"}) == "FAILURE"
    assert ui.wait_for(one, {"SUCCESS", "FAILURE"}) == "SUCCESS"
    assert ui.wait_for(everything, {"SUCCESS", "FAILURE"}) == "SUCCESS"


def test_the_instance_watches_every_run_for_its_maximum_time(ui):
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(ui.dagster_home))
    assert instance.run_monitoring_enabled
    assert 0 < instance.run_monitoring_max_runtime_seconds <= 6 * 3600
    concurrency = instance.get_concurrency_config().pool_config
    assert (concurrency.pool_granularity.value, concurrency.default_pool_limit) == ("run", 1)


def test_the_sensors_page_shows_which_alerts_are_off(ui, page):
    text = visit(page, f"{ui.url}/automation", "automation", "slack_on_run_failure")
    for sensor in ("sentry_on_run_failure", "slack_on_run_failure"):
        assert sensor in text


def test_a_dry_run_launched_from_the_launchpad_shows_its_plan(ui, page):
    run_id = ui.launch(
        "update_progress_job",
        run_config={"resources": {"run_options": {"config": {"dry_run": True}}}},
    )
    assert ui.wait_for(run_id, {"FAILURE", "SUCCESS", "CANCELED"}) == "SUCCESS"
    text = visit(
        page,
        f"{ui.url}/assets/achievement_progress",
        "dry-run-plan",
        "DRY RUN: nothing was written",
    )
    assert "plan_progress" in text and "plan_job" in text and "plan_preview" in text
    assert re.search(r"\d+ change\(s\): \d+ link, \d+ achievement", text), text[-2000:]


def test_the_asset_pages_show_no_email_or_secret(ui, page):
    for asset in ASSET_NAMES:
        visit(page, f"{ui.url}/assets/{asset}", f"asset-{asset}", asset)
    visit(page, f"{ui.url}/runs", "runs", "update_progress_job")
    assert len(VISITED) >= 10
    for url, content in VISITED.items():
        assert DEFAULT_CONSUMER_SECRET not in content, url
        found = [m.group(0) for m in EMAIL.finditer(content)]
        assert found == [], (url, found[:5])


def test_the_ui_stops_on_sigterm(ui):
    import psutil

    children = psutil.Process(ui.process.pid).children(recursive=True)
    assert children, "dagster dev and its webserver, daemon and code server"
    os.kill(ui.process.pid, signal.SIGTERM)
    assert ui.process.wait(timeout=90) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]
