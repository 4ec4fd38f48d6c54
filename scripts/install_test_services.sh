#!/usr/bin/env bash
# Installs the real systems the tests run against, all from Debian's archive: redis-server
# (Sidekiq's Redis and the shared response cache), the Ruby consumer (Ruby 3.1, ActiveJob
# 6.1, Sidekiq 6, GlobalID, redis-rb 4.8), docker-compose to validate the compose file, and
# chromium, the browser the UI tests drive through Playwright (Playwright's own download is
# not used).
# Idempotent: when every package is already installed, apt is not touched.
#   sudo bash scripts/install_test_services.sh
set -euo pipefail

packages=(redis-server ruby ruby-sidekiq ruby-activejob ruby-globalid ruby-redis docker-compose chromium)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # --no-install-recommends: the tests start redis-server themselves; no service is enabled.
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "test services already installed: ${packages[*]}"
fi

ruby -v
redis-server --version
dpkg-query -W -f='${Package} ${Version}\n' ruby-activejob ruby-sidekiq ruby-globalid ruby-redis chromium
