#!/usr/bin/env bash
# Makes sure the three images the deployment starts from exist locally: the Dockerfile's base
# (python:3.11-slim-bookworm) and compose's postgres and redis. Each is pulled when a registry
# answers; when none does (this CI machine has no registry), a stand-in is made from Debian
# bookworm with debootstrap, imported and tagged with the real image's name, so the unchanged
# Dockerfile builds with `podman build --pull=never`. Stand-ins carry the label
# partners-dagster.stand-in=true. The debootstrapped root file systems are cached as tarballs
# under PARTNERS_DAGSTER_CACHE (default /var/cache/partners-dagster), so a second run only
# imports them (seconds).
#   sudo bash scripts/deploy/base_images.sh
# Known differences of the stand-ins (enough for the check, not for production): Debian's
# CPython 3.11.2 and pip 23 with packages in /usr/local/lib/python3.11/dist-packages; Debian's
# PostgreSQL 15 (the compose file names 16) with a small entrypoint honouring
# POSTGRES_DB/USER/PASSWORD; Debian's redis-server 7.0.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/deploy/podman_env.sh
source scripts/deploy/podman_env.sh

CACHE=${PARTNERS_DAGSTER_CACHE:-/var/cache/partners-dagster}
mkdir -p "$CACHE/debs"

base_image=$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)
postgres_image=$(awk '$1 == "image:" && $2 ~ /^postgres:/ { print $2; exit }' deploy/compose/docker-compose.yaml)
redis_image=$(awk '$1 == "image:" && $2 ~ /^redis:/ { print $2; exit }' deploy/compose/docker-compose.yaml)

qualified() { # podman stores short names under docker.io/library/
  case "$1" in */*) echo "$1" ;; *) echo "docker.io/library/$1" ;; esac
}

present_or_pulled() {
  local image
  image=$(qualified "$1")
  if podman image exists "$image"; then
    echo "have $image"
    return 0
  fi
  echo "pulling $image (a stand-in is made if no registry answers within 60 s)"
  timeout 60 podman pull -q "$image" >/dev/null 2>&1
}

# The Debian mirror apt itself uses on this machine.
mirror() {
  local uri
  uri=$(grep -h -m1 -E '^URIs:.*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{ print $2 }' || true)
  if [[ -z "$uri" ]]; then
    uri=$(grep -h -m1 -E '^deb .*debian/? bookworm' /etc/apt/sources.list 2>/dev/null | awk '{ print $2 }' || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# rootfs NAME PACKAGES: a cached tarball of a minbase bookworm with PACKAGES; prints its path.
rootfs() {
  local name=$1 packages=$2 tarball="$CACHE/bookworm-$1.tar" dir
  if [[ -s "$tarball" ]]; then
    echo "$tarball"
    return 0
  fi
  dir=$(mktemp -d "$CACHE/rootfs-$name.XXXXXX")
  echo "debootstrap bookworm ($name: $packages) from $(mirror)" >&2
  debootstrap --variant=minbase --include="$packages" --cache-dir="$CACHE/debs" \
    bookworm "$dir" "$(mirror)" >"$CACHE/debootstrap-$name.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap-$name.log" >&2; rm -rf "$dir"; return 1; }
  # The CA certificates this machine adds for reaching package registries (an egress proxy's
  # own CA here): pip inside the build reaches them the same way the host does.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    chroot "$dir" update-ca-certificates >/dev/null
  fi
  customise_"$name" "$dir"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  rm -rf "$dir"
  echo "$tarball"
}

customise_python() { # behave like the official image for `pip install .`
  rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$1/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$1/usr/local/bin/pip"
}

customise_services() {
  mkdir -p "$1/data" "$1/run/postgresql"
  chroot "$1" chown postgres:postgres /run/postgresql
}

standin() { # IMAGE TARBALL --change... : import a stand-in tagged as IMAGE
  local image tarball=$2
  image=$(qualified "$1")
  shift 2
  podman import --quiet --change 'LABEL partners-dagster.stand-in=true' "$@" \
    "$tarball" "$image" >/dev/null
  echo "made stand-in $image from $tarball"
}

if ! present_or_pulled "$base_image"; then
  tarball=$(rootfs python "python3,python3-pip,python3-venv,ca-certificates,netbase,tzdata")
  standin "$base_image" "$tarball" --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]'
fi

need_services=()
present_or_pulled "$postgres_image" || need_services+=(postgres)
present_or_pulled "$redis_image" || need_services+=(redis)
if ((${#need_services[@]})); then
  tarball=$(rootfs services "postgresql-15,redis-server,ca-certificates,netbase,tzdata")
  rootfs_image=localhost/partners-dagster-standin-services:bookworm
  podman import --quiet "$tarball" "$rootfs_image" >/dev/null
  for service in "${need_services[@]}"; do
    case $service in
      postgres) image=$postgres_image ;;
      redis) image=$redis_image ;;
    esac
    # A two-line build on the imported root file system: no registry, no network.
    podman build --pull=never --quiet -t "$(qualified "$image")" \
      -f "scripts/deploy/$service-standin.Containerfile" \
      --build-arg ROOTFS="$rootfs_image" scripts/deploy >/dev/null
    echo "made stand-in $(qualified "$image") from $tarball"
  done
fi
