"""Launch both nightly jobs through the webserver's GraphQL (launchRun), as the deployment
check's compose step does, and wait for them: both must succeed, one after the other (the run
queue lets one run tagged partners_dagster/partners_api call the API at a time), and the
webserver must show the step logs the runs wrote in the code server's container.

    python3 launch_nights.py http://127.0.0.1:PORT

Standard library only, so it runs with the host's python3. Exits non-zero with the reason."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

JOBS = ("update_memberships_job", "update_progress_job")
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
TIMEOUT_SECONDS = 600

LAUNCH = """mutation($jobName: String!) {
  launchRun(executionParams: {selector: {repositoryLocationName: "partners_dagster",
      repositoryName: "__repository__", jobName: $jobName}, runConfigData: {}}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on PipelineNotFoundError { message }
  }
}"""

RUN = """query($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status startTime endTime
      stepStats { stepKey status }
      eventConnection(afterCursor: null) { events { __typename
        ... on LogsCapturedEvent { fileKey stepKeys }
        ... on ExecutionStepFailureEvent { stepKey error { message } }
      } }
    }
  }
}"""

LOGS = """query($logKey: [String!]!) { capturedLogs(logKey: $logKey) { stdout stderr } }"""


def graphql(url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.load(response)
    if body.get("errors"):
        raise SystemExit(f"GraphQL error: {body['errors']}")
    return body["data"]


def main(url: str) -> None:
    run_ids = {}
    for job in JOBS:  # both at once: the queue must run them one after the other
        result = graphql(url, LAUNCH, {"jobName": job})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise SystemExit(f"launchRun {job}: {result}")
        run_ids[job] = result["run"]["runId"]
        print(f"launched {job}: run {run_ids[job]}")
    runs = {}
    deadline = time.monotonic() + TIMEOUT_SECONDS
    for job, run_id in run_ids.items():
        while True:
            run = graphql(url, RUN, {"runId": run_id})["runOrError"]
            if run.get("status") in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{job} still {run.get('status')} after {TIMEOUT_SECONDS} s")
            time.sleep(2)
        runs[job] = run
        steps = ", ".join(f"{s['stepKey']} {s['status']}" for s in run["stepStats"])
        print(f"{job}: {run['status']} in {run['endTime'] - run['startTime']:.1f} s ({steps})")
        if run["status"] != "SUCCESS":
            failures = [e for e in run["eventConnection"]["events"] if e.get("error")]
            raise SystemExit(f"{job} ended {run['status']}: {failures[:3]}")
    first, second = (runs[job] for job in JOBS)
    if second["startTime"] < first["endTime"]:
        raise SystemExit("the two runs overlapped: the partners_api queue limit is not applied")
    print("the second run started after the first ended (queue limit 1)")
    # Step logs: written by the run processes in the code server's container; the webserver
    # must read them (the shared DAGSTER_HOME/storage volume).
    for job, run_id in run_ids.items():
        keys = [
            e["fileKey"]
            for e in runs[job]["eventConnection"]["events"]
            if e["__typename"] == "LogsCapturedEvent"
        ]
        if not keys:
            raise SystemExit(f"{job}: no LogsCapturedEvent, so no step logs were captured")
        logs = graphql(url, LOGS, {"logKey": [run_id, "compute_logs", keys[0]]})["capturedLogs"]
        text = (logs["stdout"] or "") + (logs["stderr"] or "")
        if not text.strip():
            raise SystemExit(f"{job}: the webserver shows no step log for {keys[0]} (run {run_id})")
        print(f"{job}: the webserver shows {len(text)} characters of step logs for {keys[0]}")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
