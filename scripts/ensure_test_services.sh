#!/usr/bin/env bash
# `make test` runs this first. When a service the tests talk to is missing (redis-server,
# Ruby's Sidekiq/ActiveJob consumer, a compose CLI, chromium for the browser tests), it installs them with
# scripts/install_test_services.sh if it may (as root, or with sudo that asks no password);
# otherwise it prints one line: which tests will skip, and the one command that enables them.
# It never fails the build: the tests themselves skip, saying why (and CI refuses to skip).
set -uo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
if ! command -v ruby >/dev/null; then
  missing+=(ruby)
elif ! ruby -e 'require "active_job"; require "sidekiq"; require "global_id"; require "redis"' \
  >/dev/null 2>&1; then
  missing+=("Ruby's ActiveJob/Sidekiq/GlobalID/redis gems")
fi
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
  || missing+=(docker-compose)
command -v chromium >/dev/null || missing+=(chromium)
((${#missing[@]})) || exit 0

install=()
if [ "$(id -u)" = 0 ]; then
  install=(bash)
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  install=(sudo -n bash)
fi
if ((${#install[@]})) && command -v apt-get >/dev/null; then
  "${install[@]}" scripts/install_test_services.sh && exit 0
  echo "make test: scripts/install_test_services.sh failed (above)" >&2
fi

skipping=()
case " ${missing[*]} " in
  *" redis-server "*) skipping+=(test_follow_up_jobs.py test_shared_cache.py test_sidekiq_delivery.py) ;;
  *" ruby "* | *gems*) skipping+=("test_sidekiq_delivery.py's Ruby consumer tests") ;;
esac
case " ${missing[*]} " in *" docker-compose "*) skipping+=("test_deploy_files.py's compose check") ;; esac
case " ${missing[*]} " in *" chromium "*) skipping+=(test_browser.py) ;; esac
names=$(printf '%s, ' "${missing[@]}")
tests=$(printf '%s, ' "${skipping[@]}")
echo "make test: no ${names%, } here, so ${tests%, } will skip;" \
  "to run them: sudo bash scripts/install_test_services.sh"
