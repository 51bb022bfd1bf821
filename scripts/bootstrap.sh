#!/usr/bin/env bash
# Takes a fresh Debian 12 machine (as root) to everything gmon-agent needs to
# build and run (the demo); with --tests, also to everything the test suite
# needs: the test servers, the one-node Kubernetes build, helm and the
# manifest validator. Idempotent: a second run checks and changes nothing.
set -euo pipefail
tests=
[ "${1:-}" = --tests ] && tests=1

log() { printf 'bootstrap: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "bootstrap: must run as root (it installs packages); re-run with sudo" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
LLVM_VER=22
GO_BIN=/usr/lib/go-1.23/bin/go
BPF_LINKER_VER=0.13.0

# --- apt: Go 1.23 from bookworm-backports, LLVM 22 for bpf-linker ---------
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib/apt.sh"
BACKPORTS=/etc/apt/sources.list.d/gmon-agent-backports.sources
# The mirror comes from the machine's own apt sources; rewrite the file when
# it differs (an older bootstrap, or a machine moved to another mirror).
mirror=$(debian_mirror)
want="Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
if [ "$(cat "$BACKPORTS" 2>/dev/null)" != "$want" ]; then
  log "adding bookworm-backports"
  printf '%s\n' "$want" >"$BACKPORTS"
fi

PKGS=(golang-1.23-go "llvm-${LLVM_VER}-dev" "libpolly-${LLVM_VER}-dev" libzstd-dev
      zlib1g-dev pkg-config iproute2 procps curl protobuf-compiler
      make gcc libc6-dev ca-certificates)
# make, gcc: jemalloc (tikv-jemalloc-sys) builds from source.
# For the tests: openssl (test certificates, the cluster's CA); docker (the
# container tests and the agent image); containerd, runc, iptables (the
# one-node cluster); bpftool (what the agent leaves loaded); bpftrace (the
# overhead benchmark's peer); binutils
# (readelf, strip, objcopy); python3-venv (chart-check's kubernetes-validate
# virtualenvs). helm comes from an npm package (the machine's npm).
# golang-1.19-go: a Go release the agent must refuse.
[ -n "$tests" ] && PKGS+=(docker.io containerd runc openssl iptables bpftool bpftrace
                          binutils python3-venv golang-1.19-go)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- Rust: nightly rust-src (aya-build uses -Z build-std), bpf-linker ------
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VER"; then
  log "building bpf-linker $BPF_LINKER_VER against LLVM $LLVM_VER (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-${LLVM_VER} PATH=/usr/lib/llvm-${LLVM_VER}/bin:$PATH \
    cargo install --locked bpf-linker --version "$BPF_LINKER_VER" \
      --no-default-features --features "llvm-${LLVM_VER}"
fi

# --- Go fixtures, and for the tests their servers and Kubernetes -----------
if [ -n "$tests" ]; then
  # Newer Go releases (and VictoriaMetrics) from Debian trixie/sid, and
  # every fixture shape.
  "$root/scripts/fetch-go.sh"
  "$root/scripts/build-fixtures.sh"
  "$root/scripts/build-test-servers.sh"
  "$root/scripts/build-k8s.sh"
  # scripts/chart-check.sh installs kubernetes-validate (PyPI) on first use.
else
  "$root/scripts/build-fixtures.sh" --demo # the HTTP fixture only
fi
log "ready"
