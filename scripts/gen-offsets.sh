#!/usr/bin/env bash
# Regenerates agent/src/gobin/goffsets.tsv: builds the spawner fixture with
# every Go toolchain available (Go 1.23 from bookworm-backports, newer ones
# fetched by scripts/fetch-go.sh; add releases there) and reads runtime.g's
# layout from each binary's DWARF with the gen-offsets tool.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-buildvcs=false CGO_ENABLED=0
export GOCACHE=${GOCACHE:-/var/cache/gmon-agent/go-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bins=()
for go in /usr/lib/go-1.23/bin/go /var/cache/gmon-agent/go/*/usr/lib/go-*/bin/go; do
  [ -x "$go" ] || continue
  out="$tmp/spawner-$("$go" env GOVERSION)"
  (cd "$root/fixture" && "$go" build -o "$out" ./spawner)
  bins+=("$out")
done
cd "$root"
cargo run -q -p agent --bin gen-offsets -- "${bins[@]}" >"$tmp/goffsets.tsv"
mv "$tmp/goffsets.tsv" agent/src/gobin/goffsets.tsv
cat agent/src/gobin/goffsets.tsv
