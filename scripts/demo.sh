#!/usr/bin/env bash
# The demo: bootstrap (only what the demo needs), build, start the HTTP
# fixture, attach gmon-agent, send a few requests, and show the goroutine
# log lines and /metrics.
set -euo pipefail
# As root, or as a user with sudo (the script re-runs itself under sudo).
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "$0: run as root (no sudo here)" >&2; exit 1; }
  exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
"$root/scripts/bootstrap.sh"
cargo build -q -p agent --bin gmon-agent
APP_PORT=${APP_PORT:-18080}
METRICS_PORT=${METRICS_PORT:-5500}
work=$(mktemp -d)
cleanup() {
  kill -INT "${agent_pid:-}" 2>/dev/null && wait "${agent_pid}" 2>/dev/null || true
  kill "${app_pid:-}" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

target/fixtures/httpserver -addr "127.0.0.1:$APP_PORT" >/dev/null 2>&1 &
app_pid=$!
"${CARGO_TARGET_DIR:-target}/debug/gmon-agent" --path target/fixtures/httpserver --metrics "$METRICS_PORT" \
  >"$work/stdout" 2>"$work/stderr" &
agent_pid=$!
for _ in $(seq 100); do grep -q attached "$work/stderr" 2>/dev/null && break; sleep 0.1; done
grep -q attached "$work/stderr" || { cat "$work/stderr"; exit 1; }
echo "== gmon-agent attached to the HTTP fixture (pid $app_pid); sending 3 requests"
for _ in 1 2 3; do curl -s "http://127.0.0.1:$APP_PORT/get/200" >/dev/null; done
sleep 1
echo "== goroutine log lines (stdout)"
cat "$work/stdout"
echo "== /metrics (gmon families and agent health)"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -v '^#' | grep -E '^gmon_goroutine_(creation|exit)|^gmon_goroutine_uptime_(count|sum)|^gmon_agent_'
