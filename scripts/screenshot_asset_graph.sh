#!/usr/bin/env bash
# Takes docs/asset-graph.png: the demo's setup and runs, the Dagster UI on it, and a
# screenshot of the asset graph by headless Chromium (Debian's package `chromium`).
#   apt-get install chromium && bash scripts/screenshot_asset_graph.sh
set -euo pipefail
cd "$(dirname "$0")/.."
make .venv/bin/.installed >/dev/null
PORT="${PORT:-3300}"
export PARTNERS_DAGSTER_DATA="${PARTNERS_DAGSTER_DATA:-$PWD/.partners_dagster/screenshot}"
log="$(mktemp)"
pidfile="$(mktemp)"
# A session of its own, so that whatever is left of it at the end can be killed at once.
setsid bash -c 'echo $$ >"$0"; exec .venv/bin/partners-dagster ui --scale tiny --port "$1"' \
  "$pidfile" "$PORT" >"$log" 2>&1 &
stop_ui() {
  # partners-dagster ui stops dagster dev and everything it started on SIGTERM; whatever
  # outlives a minute is killed.
  local group; group="$(cat "$pidfile")"
  kill -TERM "$group" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$group" 2>/dev/null || break
    sleep 1
  done
  kill -KILL -- "-$group" 2>/dev/null || true
  rm -f "$log" "$pidfile"
}
trap stop_ui EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/server_info" >/dev/null && break
  sleep 1
done
# The UI greets a new local user with a "join the community" dialog; record it as seen.
curl -sf "http://127.0.0.1:$PORT/graphql" -H 'Content-Type: application/json' \
  -d '{"query": "mutation { setNuxSeen }"}' >/dev/null
url="http://127.0.0.1:$PORT/asset-groups"
.venv/bin/python scripts/screenshot.py "$url" docs/asset-graph.png --wait 15
echo "wrote docs/asset-graph.png from $url"
