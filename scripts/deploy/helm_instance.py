"""Write the dagster.yaml that Dagster's Helm chart makes from deploy/helm/values.yaml, for the
deployment check to load inside the image (no helm binary or cluster needed).

It follows the chart's instance template (templates/configmap-instance.yaml and
templates/helpers/instance/*.tpl) for the parts these values use: scheduler, PostgreSQL
storage, the K8sRunLauncher, the QueuedRunCoordinator, the no-op compute log manager, run
monitoring, run retries (the chart writes `enabled` and `max_retries` only), telemetry,
retention and additionalInstanceConfig appended last.

    python helm_instance.py VALUES [--kubeconfig FILE] [--postgres-host HOST] > dagster.yaml

--kubeconfig replaces in-cluster loading (a kubeconfig that points nowhere is enough to
construct the launcher); --postgres-host replaces the values' PostgreSQL host."""

from __future__ import annotations

import argparse
import sys

import yaml


def render(values: dict, kubeconfig: str | None, postgres_host: str | None) -> dict:
    pg = values["postgresql"]
    storage = {
        "postgres_db": {
            "username": pg["postgresqlUsername"],
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": postgres_host or pg["postgresqlHost"],
            "db_name": pg["postgresqlDatabase"],
            "port": pg["service"]["port"],
            "params": pg.get("postgresqlParams") or {},
        }
    }
    launcher = values["runLauncher"]
    if launcher["type"] != "K8sRunLauncher":
        raise SystemExit(
            f"runLauncher.type is {launcher['type']!r}; this check knows K8sRunLauncher"
        )
    k8s = launcher["config"]["k8sRunLauncher"]
    launcher_config = {
        "load_incluster_config": False if kubeconfig else k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or "partners-dagster",
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": "partners-dagster",
        "dagster_home": {"env": "DAGSTER_HOME"},
        "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
        "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
        "env_config_maps": [{"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"}]
        + [item["name"] for item in k8s.get("envConfigMaps") or [] if "name" in item],
    }
    if kubeconfig:
        launcher_config["kubeconfig_file"] = kubeconfig
    if k8s.get("envSecrets"):
        launcher_config["env_secrets"] = [item["name"] for item in k8s["envSecrets"]]
    for key, name in (
        ("envVars", "env_vars"),
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
    ):
        if k8s.get(key):
            launcher_config[name] = k8s[key]
    if "failPodOnRunFailure" in k8s:
        launcher_config["fail_pod_on_run_failure"] = k8s["failPodOnRunFailure"]
    if k8s.get("resources"):
        launcher_config["resources"] = k8s["resources"]

    instance: dict = {
        "scheduler": {"module": "dagster._core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            "config": storage,
        },
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": launcher_config,
        },
        "run_storage": {
            "module": "dagster_postgres.run_storage",
            "class": "PostgresRunStorage",
            "config": storage,
        },
        "event_log_storage": {
            "module": "dagster_postgres.event_log",
            "class": "PostgresEventLogStorage",
            "config": storage,
        },
    }
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    if daemon["enabled"] and coordinator["enabled"]:
        queued = coordinator["config"]["queuedRunCoordinator"]
        config = {}
        if queued.get("maxConcurrentRuns"):
            config["max_concurrent_runs"] = queued["maxConcurrentRuns"]
        if queued.get("tagConcurrencyLimits"):
            config["tag_concurrency_limits"] = queued["tagConcurrencyLimits"]
        instance["run_coordinator"] = {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            **({"config": config} if config else {}),
        }
    instance["compute_logs"] = {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
    monitoring = daemon.get("runMonitoring") or {}
    if daemon["enabled"] and monitoring.get("enabled"):
        instance["run_monitoring"] = {
            "enabled": True,
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        }
    retries = daemon.get("runRetries") or {}
    if daemon["enabled"] and retries.get("enabled"):
        # What the chart writes: retryOnAssetOrOpFailure is not among it.
        instance["run_retries"] = {"enabled": True}
        if retries.get("maxRetries"):
            instance["run_retries"]["max_retries"] = retries["maxRetries"]
    instance["telemetry"] = {"enabled": values["telemetry"]["enabled"]}
    retention = values.get("retention") or {}
    if retention.get("enabled"):
        instance["retention"] = {
            name: {"purge_after_days": retention[name]["purgeAfterDays"]}
            for name in ("sensor", "schedule")
            if retention.get(name)
        }
    for key, value in (values.get("additionalInstanceConfig") or {}).items():
        if key in instance:  # the chart appends; a repeated key would be a duplicate in YAML
            raise SystemExit(f"additionalInstanceConfig.{key} repeats a key the chart writes")
        instance[key] = value
    return instance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("values")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--postgres-host")
    args = parser.parse_args()
    with open(args.values) as handle:
        values = yaml.safe_load(handle)
    yaml.safe_dump(render(values, args.kubeconfig, args.postgres_host), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
