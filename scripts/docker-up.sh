#!/usr/bin/env bash
# Starts a Docker daemon for the container tests if none answers (there is
# no systemd here). Idempotent; data and log live outside the checkout.
set -euo pipefail
docker=/usr/bin/docker
if "$docker" info >/dev/null 2>&1; then exit 0; fi
state=/var/cache/gmon-agent/docker
mkdir -p "$state"
echo "docker-up: starting dockerd (log: $state/dockerd.log)" >&2
nohup dockerd --data-root "$state/data" --pidfile "$state/dockerd.pid" \
  >"$state/dockerd.log" 2>&1 </dev/null &
for _ in $(seq 1 100); do
  if "$docker" info >/dev/null 2>&1; then exit 0; fi
  sleep 0.2
done
echo "docker-up: dockerd did not answer in 20 s; see $state/dockerd.log" >&2
exit 1
