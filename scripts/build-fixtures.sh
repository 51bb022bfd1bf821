#!/usr/bin/env bash
# Builds the Go fixtures into target/fixtures (skipped when up to date);
# with --demo only the HTTP fixture the demo runs.
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

if [ "${1:-}" = --demo ]; then
  build $GO123 httpserver httpserver
  exit 0
fi
for p in httpserver spawner churn leaky; do
  build $GO123 $p $p
done
# The shapes production binaries come in: stripped (no symbols, no DWARF),
# PIE, both, and cgo (external linker, dynamic libc), then newer releases.
strip='-ldflags=-s -w'
build $GO123 spawner-stripped spawner "$strip"
build $GO123 spawner-pie spawner -buildmode=pie
build $GO123 spawner-pie-stripped spawner -buildmode=pie "$strip"
CGO_ENABLED=1 build $GO123 spawner-cgo spawner
CGO_ENABLED=1 build $GO123 spawner-cgo-pie-stripped spawner -buildmode=pie "$strip"
for r in 1.24 1.26; do
  go=/var/cache/gmon-agent/go/$r/usr/lib/go-$r/bin/go
  build "$go" "spawner-go$r" spawner
  build "$go" "spawner-go$r-pie-stripped" spawner -buildmode=pie "$strip"
done
# The spawner's HTTP mode (-tags podhttp), for the pods of the Kubernetes
# test: static, PIE, and the newer releases (stripped PIE included).
build $GO123 spawner-http spawner -tags podhttp
build $GO123 spawner-http-pie spawner -tags podhttp -buildmode=pie
for r in 1.24 1.26; do
  build "/var/cache/gmon-agent/go/$r/usr/lib/go-$r/bin/go" "spawner-http-go$r-pie-stripped" spawner \
    -tags podhttp -buildmode=pie "$strip"
done
# A static program that is not Go (for the container tests).
if [ ! -x "$out/c-waiter" ] || [ "$root/fixture/c/waiter.c" -nt "$out/c-waiter" ]; then
  gcc -static -O2 -o "$out/c-waiter" "$root/fixture/c/waiter.c"
  echo "fixture: built c-waiter" >&2
fi
# A Go release older than 1.23, which the agent must refuse.
build $GO119 spawner-go1.19 spawner
