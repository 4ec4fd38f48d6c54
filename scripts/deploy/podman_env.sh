# Sourced by the deployment check and scripts/deploy/base_images.sh: podman settings this CI
# sandbox needs, in a file of our own (CONTAINERS_CONF) so /etc/containers stays untouched.
# - default_ulimits: podman's default asks for a higher open-files limit than the sandbox
#   grants (no CAP_SYS_RESOURCE), and every container then fails with
#   "setrlimit RLIMIT_NOFILE: Operation not permitted".
# - runtime = "runc": Debian bookworm's crun 1.8.1 refuses this machine's hybrid cgroup layout.
# - network_backend = "netavark" (with aardvark-dns): compose services find each other by name
#   (`postgres`, `redis`, `code-server`); podman 4.3 picks CNI when images already exist, and
#   Debian has no DNS plugin for CNI, so "postgres" would not resolve.
# None changes what runs in the containers; on a normal host they are harmless.
# Set PARTNERS_DAGSTER_PODMAN_CONF to a file of your own to use other settings.
if [[ -z "${PARTNERS_DAGSTER_PODMAN_CONF:-}" ]]; then
  PARTNERS_DAGSTER_PODMAN_CONF=${PARTNERS_DAGSTER_CACHE:-/var/cache/partners-dagster}/containers.conf
  mkdir -p "$(dirname "$PARTNERS_DAGSTER_PODMAN_CONF")"
  cat >"$PARTNERS_DAGSTER_PODMAN_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
CONF
fi
export CONTAINERS_CONF=$PARTNERS_DAGSTER_PODMAN_CONF
