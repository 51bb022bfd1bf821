#!/usr/bin/env bash
# Fetches what bookworm lacks into a private folder, without touching the
# system: Go releases newer than bookworm's, VictoriaMetrics (an OTLP
# metrics backend for the export tests, and the PromQL backend the
# dashboard and rules are tested against) and Prometheus' promtool (checks
# that they are valid PromQL), as Debian trixie/sid packages downloaded
# with a private apt configuration and unpacked with dpkg-deb. Idempotent.
#   /var/cache/gmon-agent/go/<release>/usr/lib/go-<release>/bin/go
#   /var/cache/gmon-agent/vm/usr/bin/victoria-metrics
#   /var/cache/gmon-agent/prom/usr/bin/promtool
set -euo pipefail
cache=/var/cache/gmon-agent
releases=(1.24 1.26)

have() { [ -x "$cache/go/$1/usr/lib/go-$1/bin/go" ]; }
missing=()
for r in "${releases[@]}"; do have "$r" || missing+=("$r"); done
vm=$cache/vm/usr/bin/victoria-metrics
promtool=$cache/prom/usr/bin/promtool
[ ${#missing[@]} -eq 0 ] && [ -x "$vm" ] && [ -x "$promtool" ] && exit 0

apt_dir=$cache/apt-go
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib/apt.sh"
mirror=$(debian_mirror)
key=/usr/share/keyrings/debian-archive-keyring.gpg
private_apt "$apt_dir" "deb [signed-by=$key] $mirror trixie main" "deb [signed-by=$key] $mirror sid main" \
  "deb [signed-by=$key] $mirror bookworm main"
echo "fetch-go: fetching Go ${missing[*]:-} / VictoriaMetrics / promtool from Debian" >&2
apt-get update -qq
if [ ! -x "$vm" ]; then
  (cd "$apt_dir/archives" && apt-get download -qq victoria-metrics)
  rm -rf "$cache/vm" && mkdir -p "$cache/vm"
  dpkg-deb -x "$(ls "$apt_dir"/archives/victoria-metrics_*.deb | tail -1)" "$cache/vm"
  "$vm" -version >&2
fi
if [ ! -x "$promtool" ]; then
  # bookworm's: trixie's package no longer ships promtool.
  (cd "$apt_dir/archives" && apt-get download -qq prometheus/bookworm)
  rm -rf "$cache/prom.tmp" && mkdir -p "$cache/prom.tmp"
  dpkg-deb -x "$(ls "$apt_dir"/archives/prometheus_2.42*.deb | tail -1)" "$cache/prom.tmp"
  # Only promtool is used; the server and its web assets are not kept.
  mkdir -p "$cache/prom/usr/bin"
  mv "$cache/prom.tmp/usr/bin/promtool" "$promtool"
  rm -rf "$cache/prom.tmp"
  "$promtool" --version >&2
fi
for r in "${missing[@]+"${missing[@]}"}"; do
  (cd "$apt_dir/archives" && apt-get download -qq "golang-$r-go" "golang-$r-src")
  rm -rf "$cache/go/$r.tmp" && mkdir -p "$cache/go/$r.tmp"
  for deb in "$apt_dir"/archives/golang-"$r"-{go,src}_*.deb; do
    dpkg-deb -x "$deb" "$cache/go/$r.tmp"
  done
  rm -rf "$cache/go/$r" && mv "$cache/go/$r.tmp" "$cache/go/$r"
  "$cache/go/$r/usr/lib/go-$r/bin/go" version >&2
done
