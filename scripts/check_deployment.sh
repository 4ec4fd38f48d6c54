#!/usr/bin/env bash
# The deployment check: builds the repository's Dockerfile and runs what it deploys, as a new
# operator would, on this machine. CI runs it (.ci/run); run it as root:
#   sudo bash scripts/check_deployment.sh
# In order:
#   1. install podman and its helpers (netavark, aardvark-dns) from Debian, and podman-compose from PyPI (own venv);
#   2. make the base images locally when no registry serves them (scripts/deploy/base_images.sh,
#      cached under PARTNERS_DAGSTER_CACHE, default /var/cache/partners-dagster);
#   3. build the image (`podman build --pull=never`) and check it: the pinned dagster, the
#      command line, uid 10001, dagster_k8s importable, the installed package (not a source
#      folder) imported and not writable, no build/ or egg-info, no secret in its env/history;
#   4. bring the compose topology up (deploy/compose), with a tiny seeded Teach Computing
#      database and the sandbox API inside the code server's container; run `db upgrade`;
#      launch both nightly jobs through the webserver's GraphQL; assert success, rows written,
#      and step logs shown by the webserver;
#   5. load the Kubernetes instance that deploy/helm/values.yaml describes, inside the image;
#   6. tear everything down, whatever failed (trap).
# Environment: PARTNERS_DAGSTER_DOCKERFILE (default Dockerfile), PARTNERS_DAGSTER_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
started=$(date +%s)
step() { echo "== [$(($(date +%s) - started)) s] $*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
[[ $(id -u) == 0 ]] || fail "run as root (podman builds and the apt installs need it)"

CACHE=${PARTNERS_DAGSTER_CACHE:-/var/cache/partners-dagster}
export PARTNERS_DAGSTER_CACHE=$CACHE
DOCKERFILE=${PARTNERS_DAGSTER_DOCKERFILE:-Dockerfile}
IMAGE=localhost/partners-dagster:check
PROJECT=partners-dagster-check
DAGSTER_VERSION=$(sed -n 's/^ *"dagster==\([0-9.]*\)",$/\1/p' pyproject.toml)
K8S_VERSION=$(sed -n 's/^ *"dagster-k8s==\([0-9.]*\)",$/\1/p' pyproject.toml)

# --- 1. packages ------------------------------------------------------------------------------
step "Debian packages and podman-compose"
# netavark and aardvark-dns: name resolution between compose services (scripts/deploy/podman_env.sh).
packages=(podman buildah debootstrap runc uidmap fuse-overlayfs slirp4netns netavark aardvark-dns)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "already installed: ${packages[*]}"
fi
COMPOSE_VENV=$CACHE/podman-compose-venv
if [[ ! -x $COMPOSE_VENV/bin/podman-compose ]]; then
  python3 -m venv "$COMPOSE_VENV"
  "$COMPOSE_VENV/bin/pip" install --quiet 'podman-compose>=1.6,<2'
fi
podman --version
"$COMPOSE_VENV/bin/podman-compose" --version 2>/dev/null | grep -i 'podman-compose version' || true
# Sandbox settings (lower default ulimits, runc), each explained in the file.
# shellcheck source=scripts/deploy/podman_env.sh
source scripts/deploy/podman_env.sh

# --- 2. base images ---------------------------------------------------------------------------
step "base images (pulled, or made with debootstrap and cached)"
bash scripts/deploy/base_images.sh

# --- the work folder, the compose project and the teardown (set up before anything runs) --
WORK=$(mktemp -d /tmp/partners-dagster-check.XXXXXX)
COMPOSE_DIR=$WORK/compose
cp -r deploy/compose "$COMPOSE_DIR"
secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
pg_password=$(secret)
redis_password=$(secret)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# .env as an operator fills it in (from .env.example): the Teach Computing database is a
# second database in the compose PostgreSQL, the Sidekiq Redis a second Redis database, and
# the Partners API the sandbox inside the code server's container (it answers loopback only).
sed -e "s|^DAGSTER_PG_PASSWORD=.*|DAGSTER_PG_PASSWORD=$pg_password|" \
  -e "s|^REDIS_PASSWORD=.*|REDIS_PASSWORD=$redis_password|" \
  -e "s|^FL_PARTNERS_CACHE=.*|FL_PARTNERS_CACHE=redis://:$redis_password@redis:6379/0|" \
  -e "s|^FL_PARTNERS_URL=.*|FL_PARTNERS_URL=http://127.0.0.1:8765|" \
  -e "s|^FL_PARTNERS_CONSUMER_KEY=.*|FL_PARTNERS_CONSUMER_KEY=check-$(secret)|" \
  -e "s|^FL_PARTNERS_CONSUMER_SECRET=.*|FL_PARTNERS_CONSUMER_SECRET=$(secret)|" \
  -e "s|^TEACHCOMPUTING_DATABASE_URL=.*|TEACHCOMPUTING_DATABASE_URL=postgresql+psycopg2://dagster:$pg_password@postgres:5432/teachcomputing|" \
  -e "s|^TEACHCOMPUTING_SIDEKIQ_REDIS_URL=.*|TEACHCOMPUTING_SIDEKIQ_REDIS_URL=redis://:$redis_password@redis:6379/1|" \
  -e "s|^PARTNERS_DAGSTER_IMAGE=.*|PARTNERS_DAGSTER_IMAGE=$IMAGE|" \
  deploy/compose/.env.example >"$COMPOSE_DIR/.env"
# Port 3000 may be taken on a CI machine.
cat >"$COMPOSE_DIR/check-override.yaml" <<YAML
services:
  webserver:
    ports: !override
      - "127.0.0.1:$port:3000"
YAML
compose() {
  (cd "$COMPOSE_DIR" && "$COMPOSE_VENV/bin/podman-compose" -p "$PROJECT" \
    -f docker-compose.yaml -f check-override.yaml "$@")
}
container() { podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" | head -1; }

healthchecks_pid=
teardown() {
  local status=$? id service
  set +e
  trap - EXIT INT TERM
  step "teardown (exit status $status)"
  [[ -n $healthchecks_pid ]] && kill "$healthchecks_pid" 2>/dev/null
  if ((status != 0)) && [[ -s $WORK/compose.log ]]; then
    echo "--- last lines of podman-compose"
    tail -20 "$WORK/compose.log" 2>/dev/null
    for service in db-upgrade code-server webserver daemon; do
      id=$(container "$service" || true)
      [[ -n $id ]] && { echo "--- last lines of $service"; podman logs --tail 25 "$id" 2>&1 || true; }
    done
  fi
  if podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | grep -q .; then
    compose down -v >/dev/null 2>&1 || echo "podman-compose down -v failed"
  fi
  rm -rf "$WORK"
  echo "deployment check took $(($(date +%s) - started)) s"
  exit "$status"
}
trap teardown EXIT INT TERM

# podman-compose on podman 4 needs systemd timers for healthchecks, and there is none here:
# run each container's healthcheck every few seconds ourselves, and wait for the states that
# depends_on names (podman-compose ignores its conditions).
run_healthchecks() {
  while sleep 3; do
    for id in $(podman ps -q --filter "label=io.podman.compose.project=$PROJECT"); do
      podman healthcheck run "$id" >/dev/null 2>&1 || true
    done
  done
}
wait_healthy() { # SERVICE... within 240 s
  local service id deadline=$(($(date +%s) + 240))
  for service in "$@"; do
    until id=$(container "$service") && [[ -n $id ]] \
      && [[ $(podman inspect --format '{{.State.Health.Status}}' "$id" 2>/dev/null) == healthy ]]; do
      (($(date +%s) < deadline)) || fail "$service is not healthy after 240 s"
      [[ -n $id && $(podman inspect --format '{{.State.Status}}' "$id") == exited ]] \
        && fail "$service exited"
      sleep 2
    done
    echo "$service healthy"
  done
}

# --- 3. the image -----------------------------------------------------------------------------
step "podman build --pull=never -f $DOCKERFILE"
build_started=$(date +%s)
# The build's own network is the host's: pip inside it reaches the package registries as the
# host does (a build container on netavark's bridge found no resolver in this sandbox).
podman build --pull=never --network host --quiet -f "$DOCKERFILE" -t "$IMAGE" . >/dev/null
echo "built $IMAGE in $(($(date +%s) - build_started)) s, $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }')"

step "the image"
in_image() { podman run --rm --network none "$IMAGE" "$@"; }
version=$(in_image dagster --version)
[[ $version == *"$DAGSTER_VERSION"* ]] || fail "dagster --version says '$version', expected $DAGSTER_VERSION"
echo "$version"
in_image partners-dagster --help >/dev/null || fail "partners-dagster --help failed in the image"
echo "partners-dagster --help: ok"
uid=$(in_image id -u)
[[ $uid == 10001 ]] || fail "the image runs as uid $uid, expected 10001"
echo "uid $uid"
k8s=$(in_image python -c 'import dagster_k8s; print(dagster_k8s.__version__)' 2>&1) \
  || fail "dagster_k8s does not import in the image (the Helm values' K8sRunLauncher needs it): ${k8s##*$'\n'}"
[[ $k8s == "$K8S_VERSION" ]] || fail "dagster-k8s is $k8s in the image, pyproject.toml pins $K8S_VERSION"
echo "dagster_k8s $k8s"
# The installed package is what runs: no source folder beside it, no build leftovers, and
# the runtime user cannot change the code or the instance.
podman run --rm -i --network none "$IMAGE" python - <<'PY' || fail "the image's code layout is wrong (see above)"
import os, pathlib, sys, sysconfig
import partners_dagster
package = pathlib.Path(partners_dagster.__file__).parent
problems = []
if "-packages" not in str(package):
    problems.append(f"partners_dagster is imported from {package}, not the installed package")
for root in ("/opt/dagster", sysconfig.get_paths()["purelib"], "/usr/local/lib"):
    for path in pathlib.Path(root).rglob("*"):
        if path.name == "build" and path.is_dir() and "partners" in str(path):
            problems.append(f"build folder {path}")
        if path.name.endswith(".egg-info") and "partners" in path.name:
            problems.append(f"egg-info {path}")
        if path.name == "partners_dagster" and path.is_dir() and path != package:
            problems.append(f"a second copy of the source at {path}")
for path in (package, package / "definitions.py", pathlib.Path("/opt/dagster/app"),
             pathlib.Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"):
    if os.access(path, os.W_OK):
        problems.append(f"{path} is writable by uid {os.getuid()}")
print(f"partners_dagster from {package}, read-only; no build/ or egg-info")
sys.exit("; ".join(problems) if problems else 0)
PY
secret_names='PASSWORD|SECRET|TOKEN|DSN|_KEY=|DATABASE_URL|REDIS_URL'
if podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep -E "$secret_names"; then
  fail "the image's environment names a secret (above)"
fi
if podman history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" | grep -E "($secret_names)=[^ ]"; then
  fail "the image's history sets a secret (above)"
fi
echo "no secret in the image's env or history"

# --- 4. compose -------------------------------------------------------------------------------
step "compose: postgres and redis"
compose up -d postgres redis >>"$WORK/compose.log" 2>&1
run_healthchecks &
healthchecks_pid=$!
wait_healthy postgres redis
postgres=$(container postgres)
podman exec "$postgres" psql -q -U dagster -d dagster -c 'CREATE DATABASE teachcomputing'

step "compose: a tiny seeded Teach Computing database, then db upgrade"
in_db_upgrade() { # the db-upgrade service (its image and its one setting), another command
  local log=$WORK/db-upgrade.log
  if compose run --rm db-upgrade "$@" >"$log" 2>&1; then
    grep -v -e 'unable to get systemd' -e '^[0-9a-f]\{64\}$' "$log" | tail -1
  else
    tail -25 "$log"
    fail "podman-compose run db-upgrade ${*:-(db upgrade)} failed"
  fi
}
in_db_upgrade partners-dagster db create-teachcomputing-tables
in_db_upgrade partners-dagster db seed --from-sandbox --scale tiny --seed 1
in_db_upgrade | grep 'at revision' || fail "db upgrade did not reach a revision"

step "compose: code server (with the sandbox API inside it), webserver, daemon"
compose up -d code-server >>"$WORK/compose.log" 2>&1
wait_healthy code-server
code_server=$(container code-server)
podman exec -d "$code_server" partners-dagster sandbox --host 127.0.0.1 --port 8765 --scale tiny --seed 1 >/dev/null
compose up -d webserver daemon >>"$WORK/compose.log" 2>&1
wait_healthy webserver daemon
podman exec "$code_server" python -c '
import time, urllib.request
for _ in range(60):
    try:
        urllib.request.urlopen("http://127.0.0.1:8765/", timeout=2)
        break
    except OSError as error:
        if getattr(error, "code", None):
            break  # it answered (an HTTP error is an answer)
        time.sleep(1)
else:
    raise SystemExit("the sandbox API did not start in the code server container")'

step "both nightly jobs through the webserver's GraphQL (launchRun)"
python3 scripts/deploy/launch_nights.py "http://127.0.0.1:$port"
counts=$(podman exec "$postgres" psql -At -U dagster -d teachcomputing -F ' ' -c \
  "SELECT (SELECT count(*) FROM partners_dagster_membership_links), (SELECT count(*) FROM achievements)")
read -r links achievements <<<"$counts"
echo "rows written: $links membership links, $achievements achievements"
((links > 0)) || fail "update_memberships_job wrote no membership link"
((achievements > 0)) || fail "update_progress_job wrote no achievement"

# --- 5. Kubernetes ----------------------------------------------------------------------------
step "the Kubernetes instance of deploy/helm/values.yaml, loaded in the image"
network=$(podman inspect --format '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "$postgres" | awk '{ print $1 }')
podman run --rm --network "$network" -e DAGSTER_PG_PASSWORD="$pg_password" \
  -v "$ROOT/scripts/deploy:/check:ro" -v "$ROOT/deploy/helm/values.yaml:/check-values.yaml:ro" \
  "$IMAGE" python /check/load_k8s_instance.py /check-values.yaml postgres \
  || fail "the Kubernetes instance of deploy/helm/values.yaml does not load in the image"

step "deployment check passed"
