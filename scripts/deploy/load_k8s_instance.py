"""Inside the project image: write the instance the Helm values describe (helm_instance.py)
into a fresh DAGSTER_HOME, with a kubeconfig that points nowhere, and load it as the daemon
and the webserver do. Loading the K8sRunLauncher's class and config is what a missing
dagster-k8s breaks ("Couldn't import module dagster_k8s").

    python load_k8s_instance.py VALUES POSTGRES_HOST

Needs DAGSTER_PG_PASSWORD and a reachable PostgreSQL at POSTGRES_HOST (the compose one)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helm_instance import render

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: nobody, user: {token: not-a-token}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody, namespace: partners-dagster}}]
current-context: nowhere
"""


def main(values_path: str, postgres_host: str) -> None:
    home = Path(tempfile.mkdtemp(prefix="dagster-home-"))
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    values = yaml.safe_load(Path(values_path).read_text())
    instance_yaml = render(values, str(kubeconfig), postgres_host)
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml, sort_keys=False))
    # What the chart sets in every Dagster container.
    os.environ.update(
        DAGSTER_HOME=str(home),
        DAGSTER_K8S_INSTANCE_CONFIG_MAP="partners-dagster-instance",
        DAGSTER_K8S_PG_PASSWORD_SECRET=values["global"]["postgresqlSecretName"],
        DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP="partners-dagster-pipeline-env",
    )
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        launcher = instance.run_launcher
        problems = []
        if type(launcher).__name__ != "K8sRunLauncher":
            problems.append(f"run launcher is {type(launcher).__name__}")
        if type(instance.run_coordinator).__name__ != "QueuedRunCoordinator":
            problems.append(f"run coordinator is {type(instance.run_coordinator).__name__}")
        if not (instance.run_retries_enabled and instance.run_retries_max_retries == 1):
            problems.append("run retries are not on with one retry")
        if instance.run_retries_retry_on_asset_or_op_failure is not False:
            problems.append("run retries would retry a failure inside an asset")
        if not instance.run_monitoring_enabled:
            problems.append("run monitoring is off")
        print(
            f"Kubernetes instance loads: {type(launcher).__module__}.{type(launcher).__name__} "
            f"(namespace {launcher.job_namespace}, env secrets {launcher.env_secrets}), "
            f"{type(instance.run_coordinator).__name__}, run retries max "
            f"{instance.run_retries_max_retries} and retry_on_asset_or_op_failure "
            f"{instance.run_retries_retry_on_asset_or_op_failure}, storage "
            f"{type(instance.run_storage).__name__}"
        )
        if problems:
            raise SystemExit("the Kubernetes instance is wrong: " + "; ".join(problems))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
