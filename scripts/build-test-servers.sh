#!/usr/bin/env bash
# Builds the real servers the export and Kubernetes tests run against, from
# libraries Debian packages, without touching the system:
#   otelcol-gmon  OpenTelemetry Collector (golang-opentelemetry-collector-dev)
#   kube-testapi  Kubernetes API server  (golang-k8s-apiserver-dev) on etcd
#   etcd          etcd-server from sid
# The Go sources are e2e/servers/*/main.go. Library source packages come
# from sid with the private apt configuration of fetch-go.sh and are
# unpacked, never installed; sid's Go (fetched by fetch-go.sh) builds them
# in GOPATH mode. Output, reused while the sources are unchanged:
#   /var/cache/gmon-agent/servers/{otelcol-gmon,kube-testapi,etcd}
# About 5 minutes the first time (downloads 224 MB of Go sources).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=/var/cache/gmon-agent
out=$cache/servers
go=$cache/go/1.26/usr/lib/go-1.26/bin/go
export APT_CONFIG=$cache/apt-go/etc/apt.conf
[ -x "$go" ] && [ -f "$APT_CONFIG" ] || "$root/scripts/fetch-go.sh"

stamp=$(cat "$0" "$root"/e2e/servers/*/main.go | sha256sum | cut -c1-16)
if [ -x "$out/otelcol-gmon" ] && [ -x "$out/kube-testapi" ] && [ -x "$out/etcd" ] &&
   [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
log() { printf 'build-test-servers: %s\n' "$*" >&2; }
mkdir -p "$out"

debs=$cache/gosrc-debs
src=$cache/gosrc
if [ ! -f "$src/.complete" ]; then
  log "downloading the Go source packages the servers need (sid)"
  apt-get update -qq
  # Every Go library package the two library roots depend on, transitively.
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances \
      golang-opentelemetry-collector-dev golang-k8s-apiserver-dev 2>/dev/null |
    grep -E '^golang-.*-dev$' | sort -u >"$cache/gosrc-packages.txt"
  mkdir -p "$debs"
  (cd "$debs" && apt-get download -qq $(cat "$cache/gosrc-packages.txt"))
  rm -rf "$src" && mkdir -p "$src"
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$src"; done
  touch "$src/.complete"
fi
if [ ! -x "$out/etcd" ]; then
  log "fetching etcd-server (sid)"
  (cd "$cache/apt-go/archives" && apt-get download -qq etcd-server)
  tmp=$(mktemp -d)
  dpkg-deb -x "$(ls "$cache"/apt-go/archives/etcd-server_*.deb | tail -1)" "$tmp"
  install -m 755 "$tmp/usr/bin/etcd" "$out/etcd"
  rm -rf "$tmp"
fi

gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
export GO111MODULE=off GOPATH="$gopath:$src/usr/share/gocode" GOCACHE=$cache/go-build GOFLAGS=
for s in otelcol:otelcol-gmon apiserver:kube-testapi; do
  dir=${s%%:*} bin=${s#*:}
  log "building $bin (a few minutes the first time)"
  mkdir -p "$gopath/src/$bin"
  cp "$root/e2e/servers/$dir/main.go" "$gopath/src/$bin/"
  (cd "$gopath/src/$bin" && "$go" build -trimpath -o "$out/$bin.tmp" .)
  mv "$out/$bin.tmp" "$out/$bin"
done
echo "$stamp" >"$out/stamp"
log "ready in $out"
