"""The deployment files: the Dockerfile, the compose project and the Helm values.

The Helm values are checked against the keys that Dagster's chart documents (its pydantic
schema, ``helm/dagster/schema/schema/charts/...``: ``values.py``, ``subschema/daemon.py``,
``subschema/run_launcher.py``, ``subschema/postgresql.py``, ``subschema/global_.py``,
``subschema/webserver.py``, ``subschema/retention.py``, the instance ConfigMap template for
``runMonitoring``, and ``dagster_user_deployments/subschema/user_deployments.py``). Only the
key paths these values use are listed below; no helm binary or cluster is needed.
``docker compose config`` runs where a Docker CLI with compose exists (no daemon needed).
scripts/check_deployment.sh builds and runs all of it (CI); these tests pin what a file can show."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_DIR = ROOT / "deploy" / "compose"
HELM_VALUES = ROOT / "deploy" / "helm" / "values.yaml"

# Key paths documented by the dagster chart. `[]` is a list item; a trailing `.*` admits any
# key below (Kubernetes objects and free-form maps the chart passes through).
CHART_KEYS = frozenset(
    {
        "global.postgresqlSecretName",
        "global.dagsterHome",
        "global.serviceAccountName",
        "generatePostgresqlPasswordSecret",
        "postgresql.enabled",
        "postgresql.postgresqlHost",
        "postgresql.postgresqlUsername",
        "postgresql.postgresqlPassword",
        "postgresql.postgresqlDatabase",
        "postgresql.postgresqlParams.*",
        "postgresql.postgresqlScheme",
        "postgresql.service.port",
        "dagsterWebserver.replicaCount",
        "dagsterWebserver.image.repository",
        "dagsterWebserver.image.tag",
        "dagsterWebserver.image.pullPolicy",
        "dagsterWebserver.envSecrets[].name",
        "dagsterWebserver.resources.*",
        "dagster-user-deployments.enabled",
        "dagster-user-deployments.enableSubchart",
        "dagster-user-deployments.deployments[].name",
        "dagster-user-deployments.deployments[].image.repository",
        "dagster-user-deployments.deployments[].image.tag",
        "dagster-user-deployments.deployments[].image.pullPolicy",
        "dagster-user-deployments.deployments[].codeServerArgs",
        "dagster-user-deployments.deployments[].dagsterApiGrpcArgs",
        "dagster-user-deployments.deployments[].port",
        "dagster-user-deployments.deployments[].includeConfigInLaunchedRuns.enabled",
        "dagster-user-deployments.deployments[].env[].name",
        "dagster-user-deployments.deployments[].env[].value",
        "dagster-user-deployments.deployments[].env[].valueFrom.*",
        "dagster-user-deployments.deployments[].envSecrets[].name",
        "dagster-user-deployments.deployments[].podSecurityContext.*",
        "dagster-user-deployments.deployments[].securityContext.*",
        "dagster-user-deployments.deployments[].resources.*",
        "runLauncher.type",
        "runLauncher.config.k8sRunLauncher.imagePullPolicy",
        "runLauncher.config.k8sRunLauncher.jobNamespace",
        "runLauncher.config.k8sRunLauncher.loadInclusterConfig",
        "runLauncher.config.k8sRunLauncher.envConfigMaps",
        "runLauncher.config.k8sRunLauncher.envSecrets[].name",
        "runLauncher.config.k8sRunLauncher.envVars",
        "runLauncher.config.k8sRunLauncher.volumeMounts",
        "runLauncher.config.k8sRunLauncher.volumes",
        "runLauncher.config.k8sRunLauncher.failPodOnRunFailure",
        "runLauncher.config.k8sRunLauncher.resources.*",
        "dagsterDaemon.enabled",
        "dagsterDaemon.image.repository",
        "dagsterDaemon.image.tag",
        "dagsterDaemon.image.pullPolicy",
        "dagsterDaemon.envSecrets[].name",
        "dagsterDaemon.runCoordinator.enabled",
        "dagsterDaemon.runCoordinator.type",
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns",
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[].key",
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[].value",
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[].limit",
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.dequeueIntervalSeconds",
        "dagsterDaemon.runRetries.enabled",
        "dagsterDaemon.runRetries.maxRetries",
        "dagsterDaemon.runRetries.retryOnAssetOrOpFailure",
        "dagsterDaemon.runMonitoring.enabled",
        "dagsterDaemon.runMonitoring.startTimeoutSeconds",
        "dagsterDaemon.runMonitoring.cancelTimeoutSeconds",
        "dagsterDaemon.runMonitoring.maxResumeRunAttempts",
        "dagsterDaemon.runMonitoring.pollIntervalSeconds",
        "dagsterDaemon.runMonitoring.freeSlotsAfterRunEndSeconds",
        "retention.enabled",
        "retention.schedule.purgeAfterDays",
        "retention.sensor.purgeAfterDays.*",
        "telemetry.enabled",
        "additionalInstanceConfig.*",
    }
)

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|DSN|_KEY$|DATABASE_URL|REDIS_URL|CACHE$")


def _leaf_paths(node, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        for item in node:
            yield from _leaf_paths(item, f"{prefix}[]")
    else:
        yield prefix


def _undocumented(values: dict) -> list[str]:
    def allowed(path: str) -> bool:
        return path in CHART_KEYS or any(
            key.endswith(".*") and path.startswith(key[:-1]) for key in CHART_KEYS
        )

    return sorted({path for path in _leaf_paths(values) if not allowed(path)})


def _helm_values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def _instance_yaml() -> dict:
    return yaml.safe_load((ROOT / "dagster.yaml").read_text())


# --- Helm -------------------------------------------------------------------------------------


def test_helm_values_use_only_keys_the_chart_documents():
    assert _undocumented(_helm_values()) == []


def test_the_key_check_catches_a_misspelt_key():
    values = _helm_values()
    values["dagsterDaemon"]["runRetries"]["maxRetry"] = 1
    values["runLauncher"]["config"]["k8sRunLauncher"]["envSecret"] = [{"name": "x"}]
    assert _undocumented(values) == [
        "dagsterDaemon.runRetries.maxRetry",
        "runLauncher.config.k8sRunLauncher.envSecret[].name",
    ]


def test_helm_values_launch_runs_as_pods_behind_the_api_tag_limit():
    values = _helm_values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    limits = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    # The same limit as the repository's dagster.yaml.
    expected = _instance_yaml()["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limits == expected == [{"key": "partners_dagster/partners_api", "limit": 1}]
    assert daemon["runMonitoring"]["enabled"] is True


def _helm_instance_module():
    spec = importlib.util.spec_from_file_location(
        "helm_instance", ROOT / "scripts" / "deploy" / "helm_instance.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_helm_instance_retries_a_dead_run_once_and_never_an_asset_failure():
    # D3: the chart's instance template writes only `enabled` and `max_retries` from
    # dagsterDaemon.runRetries, so retry_on_asset_or_op_failure goes through
    # additionalInstanceConfig, with runRetries off so the key is not written twice.
    instance = _helm_instance_module().render(_helm_values(), None, None)
    assert instance["run_retries"] == _instance_yaml()["run_retries"]
    assert instance["run_retries"]["retry_on_asset_or_op_failure"] is False
    assert _helm_values()["dagsterDaemon"]["runRetries"]["enabled"] is False


def test_the_chart_template_would_drop_retry_on_asset_or_op_failure():
    # What the values said before: the rendered instance has no retry_on_asset_or_op_failure,
    # so Dagster's default (retry asset failures too) would apply.
    values = _helm_values()
    values.pop("additionalInstanceConfig")
    values["dagsterDaemon"]["runRetries"] = {
        "enabled": True,
        "maxRetries": 1,
        "retryOnAssetOrOpFailure": False,
    }
    instance = _helm_instance_module().render(values, None, None)
    assert instance["run_retries"] == {"enabled": True, "max_retries": 1}


def test_helm_user_deployment_serves_the_code_location_with_redis_and_secrets():
    values = _helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["codeServerArgs"]
    assert args[args.index("-m") + 1] == "partners_dagster.definitions"
    assert args[args.index("--location-name") + 1] == "partners_dagster"
    env = {item["name"]: item for item in deployment["env"]}
    cache = env["FL_PARTNERS_CACHE"]["valueFrom"]["secretKeyRef"]
    assert cache["name"] and cache["key"], "FL_PARTNERS_CACHE must come from a Secret"
    assert (
        deployment["envSecrets"] and values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]
    )
    assert values["global"]["postgresqlSecretName"]
    assert values["generatePostgresqlPasswordSecret"] is False
    images = {
        (v["image"]["repository"], v["image"]["tag"])
        for v in (deployment, values["dagsterWebserver"], values["dagsterDaemon"])
    }
    assert len(images) == 1, f"one image for code, webserver and daemon, got {images}"
    for path, value in _literal_env(values):
        assert not SECRET_NAME.search(path) or value in (
            "",
            None,
        ), f"deploy/helm/values.yaml sets {path} literally: secrets belong in a Secret"


def _literal_env(values: dict):
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    for item in deployment["env"]:
        yield item["name"], item.get("value")
    yield "postgresql.postgresqlPassword", values["postgresql"]["postgresqlPassword"]


# --- Compose ----------------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "docker-compose.yaml").read_text())


def test_compose_runs_storage_cache_code_server_webserver_and_daemon():
    services = _compose()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "db-upgrade",
        "code-server",
        "webserver",
        "daemon",
    }
    command = services["code-server"]["command"]
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-m") + 1] == "partners_dagster.definitions"
    assert command[command.index("-p") + 1] == "4000"
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    for name in ("webserver", "daemon"):
        command = services[name]["command"]
        assert command[command.index("-w") + 1] == "/opt/dagster/compose/workspace.yaml"
    for name in ("db-upgrade", "code-server", "webserver", "daemon"):
        assert services[name]["image"] == "${PARTNERS_DAGSTER_IMAGE:-partners-dagster:local}"
    workspace = yaml.safe_load((COMPOSE_DIR / "workspace.yaml").read_text())
    (location,) = workspace["load_from"]
    assert location["grpc_server"] == {
        "host": "code-server",
        "port": 4000,
        "location_name": "partners_dagster",
    }


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str | int | float):
                yield str(key), str(value)
            else:
                yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def test_compose_holds_no_secret_and_the_env_example_names_every_setting():
    for key, value in _strings(_compose()):
        if SECRET_NAME.search(key):
            assert value.startswith("${"), f"docker-compose.yaml sets {key} literally"
    example = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            example[name] = value
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example must leave {name} empty"
    instance_vars = set(re.findall(r"env: (\w+)", (ROOT / "dagster.yaml").read_text()))
    required = instance_vars | {
        "FL_PARTNERS_URL",
        "FL_PARTNERS_CONSUMER_KEY",
        "FL_PARTNERS_CONSUMER_SECRET",
        "FL_PARTNERS_CACHE",
        "TEACHCOMPUTING_DATABASE_URL",
        "TEACHCOMPUTING_SIDEKIQ_REDIS_URL",
        "REDIS_PASSWORD",
        "SENTRY_DSN",
        "SLACK_BOT_TOKEN",
        "SLACK_CHANNEL",
    }
    assert required - set(example) == set()


def _compose_cli() -> list[str] | None:
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        probe = subprocess.run([*cli, "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return cli
    return None


def _compose_config(cli: list[str], compose: Path, env: str) -> subprocess.CompletedProcess:
    """``compose config`` on the copy of the project in ``compose``, with ``env`` as its .env."""
    (compose / ".env").write_text(env)
    return subprocess.run(
        [*cli, "-f", str(compose / "docker-compose.yaml"), "config"],
        cwd=compose,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_docker_compose_config_accepts_the_project(tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "no Docker CLI with compose here (neither `docker compose` nor `docker-compose` "
            "answers `version`); the YAML checks above still ran"
        )
    compose = tmp_path / "deploy" / "compose"
    shutil.copytree(COMPOSE_DIR, compose)
    env = (compose / ".env.example").read_text()
    env = env.replace("DAGSTER_PG_PASSWORD=\n", "DAGSTER_PG_PASSWORD=not-a-real-password\n")
    env = env.replace("REDIS_PASSWORD=\n", "REDIS_PASSWORD=not-a-real-password\n")
    env = env.replace(
        "TEACHCOMPUTING_DATABASE_URL=\n",
        "TEACHCOMPUTING_DATABASE_URL=postgresql+psycopg2://tc:not-a-real-password@db/tc\n",
    )
    result = _compose_config(cli, compose, env)
    assert result.returncode == 0, f"{' '.join(cli)} config rejected the file: {result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) >= {"code-server", "webserver", "daemon"}
    missing = _compose_config(
        cli, compose, env.replace("DAGSTER_PG_PASSWORD=not-a-real-password\n", "")
    )
    assert missing.returncode != 0 and "DAGSTER_PG_PASSWORD" in missing.stderr


# --- Dockerfile -------------------------------------------------------------------------------


def _dockerfile() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile_is_slim_non_root_and_installs_the_pinned_project():
    lines = _dockerfile()
    assert lines[0].startswith("FROM python:3.11-slim")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the Dockerfile never drops root"
    assert users[-1].split(":")[0] not in {"0", "root"}
    text = "\n".join(lines)
    # The project's wheel, built from this checkout, then installed (never editable).
    assert re.search(r"pip wheel --no-deps --wheel-dir /wheels \.(\s|$)", text)
    assert "pip install -e" not in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    pins = re.findall(r'"(dagster[\w-]*)==([\d.]+)"', pyproject)
    assert {name for name, _ in pins} >= {"dagster", "dagster-webserver", "dagster-postgres"}
    for line in lines:
        if line.startswith(("ENV ", "ARG ")):
            assert not SECRET_NAME.search(line.split()[1].split("=")[0]), line
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".env", ".venv", ".git"} <= set(ignored)


# --- Issue 23: what running the deployment found (D1-D8) ---------------------------------------


def _pins() -> dict[str, str]:
    return dict(re.findall(r'"([\w-]+)==([\d.]+)"', (ROOT / "pyproject.toml").read_text()))


def test_the_image_has_the_library_of_the_helm_run_launcher():
    # D1: the Helm values launch runs with dagster_k8s's K8sRunLauncher from the project image,
    # so the project depends on dagster-k8s, in lock-step with dagster-postgres.
    assert _helm_values()["runLauncher"]["type"] == "K8sRunLauncher"
    pins = _pins()
    assert (
        pins.get("dagster-k8s") == pins["dagster-postgres"]
    ), "pin dagster-k8s like dagster-postgres"


def test_git_ignores_the_compose_env_file():
    # D2: the README says never to commit deploy/compose/.env.
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("deploy/compose/.env", ".env"):
        ignored = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, timeout=30
        )
        assert ignored.returncode == 0, f"{path} is not in .gitignore"
    kept = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "deploy/compose/.env.example"],
        cwd=ROOT,
        timeout=30,
    )
    assert kept.returncode == 1, "deploy/compose/.env.example must stay in git"


def _dagster_home() -> str:
    (line,) = [line for line in _dockerfile() if "DAGSTER_HOME=" in line]
    return re.search(r"DAGSTER_HOME=(\S+)", line).group(1)


def test_compose_webserver_reads_the_step_logs_the_code_server_runs_write():
    # D4: runs are processes of the code server's container and write their step logs under
    # DAGSTER_HOME/storage (Dagster's default compute log directory): a named volume shared
    # with the webserver, which shows them, and kept when a container is re-created.
    compose = _compose()
    storage = f"{_dagster_home()}/storage"
    mounts = {}
    for name in ("code-server", "webserver"):
        for volume in compose["services"][name].get("volumes", []):
            source, _, target = volume.partition(":")
            if target.split(":")[0] == storage:
                mounts[name] = source
    assert set(mounts) == {"code-server", "webserver"}, f"{storage} is not shared: {mounts}"
    assert len(set(mounts.values())) == 1
    assert next(iter(mounts.values())) in compose["volumes"], "a named volume, not a bind mount"
    assert "compute_logs" not in _instance_yaml(), "dagster.yaml would move the compute logs"


def _final_stage(lines: list[str]) -> list[str]:
    starts = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    return lines[starts[-1] :]


def test_dockerfile_runs_the_installed_wheel_with_no_source_beside_it():
    # D5: the source folder is copied only into the build stage; the image that runs gets the
    # wheel, so nothing shadows the installed package, and no build/ or *.egg-info remain.
    lines = _dockerfile()
    final = _final_stage(lines)
    assert len(final) < len(lines), "build the wheel in a stage of its own"
    copies = [line for line in final if line.startswith("COPY ")]
    assert copies, "the final stage copies nothing"
    for line in copies:
        assert line.startswith("COPY --from=") or "partners_dagster" not in line, line
        assert " . " not in f"{line} ", f"the final stage copies the whole context: {line}"
    text = "\n".join(final)
    assert re.search(r"pip install /tmp/wheels/\S*\.whl", text)
    assert "rm -rf /tmp/wheels" in text


def test_dockerfile_leaves_the_code_and_the_instance_to_root():
    # D5: the runtime user may write only in DAGSTER_HOME's storage and the data folder.
    text = "\n".join(_final_stage(_dockerfile()))
    assert "chown -R" not in text, "a recursive chown makes the code writable by the runtime user"
    (chown,) = re.findall(r"chown dagster:dagster ([^\n]+)", text)
    owned = set(chown.replace("\\", " ").split())
    assert owned == {'"$DAGSTER_HOME"', '"$DAGSTER_HOME/storage"', '"$PARTNERS_DAGSTER_DATA"'}


def _environment(service: dict) -> dict:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return environment


def test_compose_gives_each_service_only_the_settings_it_uses():
    # D8: no env_file hands every secret to every container.
    services = _compose()["services"]
    assert not [name for name, service in services.items() if "env_file" in service]
    storage = {f"DAGSTER_PG_{key}" for key in ("HOST", "PORT", "DB", "USERNAME", "PASSWORD")}
    assert set(_environment(services["webserver"])) == storage
    assert set(_environment(services["daemon"])) == storage
    assert set(_environment(services["db-upgrade"])) == {"TEACHCOMPUTING_DATABASE_URL"}
    assert set(_environment(services["postgres"])) == {
        "POSTGRES_DB",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
    }
    assert set(_environment(services["redis"])) == {"REDIS_PASSWORD"}
    code_server = set(_environment(services["code-server"]))
    assert storage <= code_server
    assert "REDIS_PASSWORD" not in code_server, "the code server reaches Redis by FL_PARTNERS_CACHE"
    # Every setting .env.example offers reaches the one service that reads it.
    example = {
        line.partition("=")[0]
        for line in (COMPOSE_DIR / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    text = (COMPOSE_DIR / "docker-compose.yaml").read_text()
    assert [name for name in example if "${" + name not in text] == []


def test_every_long_running_service_has_a_healthcheck():
    # D8: the webserver and the daemon had none.
    services = _compose()["services"]
    for name in ("postgres", "redis", "code-server", "webserver", "daemon"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/server_info" in " ".join(services["webserver"]["healthcheck"]["test"])
    assert services["daemon"]["healthcheck"]["test"][1:] == ["dagster-daemon", "liveness-check"]


def _readme_deployment() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Deployment", 1)[1].split("\n## ", 1)[0]


def test_readme_counts_the_services_the_image_runs():
    # D6: it said five; the image runs db-upgrade, code-server, webserver and daemon.
    services = _compose()["services"]
    from_image = sorted(
        name for name, service in services.items() if "PARTNERS_DAGSTER_IMAGE" in service["image"]
    )
    assert from_image == ["code-server", "daemon", "db-upgrade", "webserver"]
    words = {4: "four", 5: "five", 6: "six"}
    section = _readme_deployment()
    assert f"The same image runs {words[len(from_image)]} services" in section
    for name in services:
        assert f"`{name}`" in section, f"the README does not name the {name} service"


def test_readme_says_how_a_container_reaches_a_database_on_the_host():
    # D7.
    section = _readme_deployment()
    assert "host.docker.internal:host-gateway" in section
    assert "host.containers.internal" in section
    assert "scripts/check_deployment.sh" in section
