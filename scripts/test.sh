#!/usr/bin/env bash
# The whole test suite: bootstrap, then every test, including the ones that
# load BPF programs and the real Kubernetes node (run as root; CI does).
set -euo pipefail
# As root, or as a user with sudo (the script re-runs itself under sudo).
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "$0: run as root (no sudo here)" >&2; exit 1; }
  exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
"$root/scripts/bootstrap.sh" --tests
# The container tests need a Docker daemon (no systemd here).
"$root/scripts/docker-up.sh"
# Default members only: agent/build.rs builds agent-ebpf for bpfel-unknown-none.
cargo build --all-targets
# Root tests share the kernel's probe state: one test binary at a time (the
# default), and the attach tests serialise themselves.
cargo test -- --test-threads=2
# The Helm chart: lint, rendered examples fresh, manifests valid for
# Kubernetes 1.20 and current, bad values refused.
"$root/scripts/chart-check.sh"
# The agent image installed with the chart on a real one-node cluster.
"$root/scripts/test-k8s.sh"
