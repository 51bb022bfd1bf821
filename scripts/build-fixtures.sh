#!/usr/bin/env bash
# Builds the Go fixtures into target/fixtures (skipped when up to date).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/fixtures"
mkdir -p "$out"
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-buildvcs=false
# An explicit cache outside the checkout: works without HOME and is reused.
export GOCACHE=${GOCACHE:-/var/cache/gmon-agent/go-build}
mkdir -p "$GOCACHE"
GO123=/usr/lib/go-1.23/bin/go
GO119=/usr/lib/go-1.19/bin/go

build() { # go name pkg [flags...]
  local go=$1 name=$2 pkg=$3; shift 3
  local bin="$out/$name"
  if [ -x "$bin" ] && [ -z "$(find "$root/fixture" -newer "$bin" -name '*.go' -print -quit)" ]; then
    return
  fi
  (cd "$root/fixture" && CGO_ENABLED=${CGO_ENABLED:-0} "$go" build "$@" -o "$bin" "./$pkg")
  echo "fixture: built $name" >&2
}

for p in httpserver spawner churn; do
  build $GO123 $p $p
done
# A Go release older than 1.23, which the agent must refuse.
build $GO119 spawner-go1.19 spawner
