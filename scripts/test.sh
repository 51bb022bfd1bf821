#!/usr/bin/env bash
# The whole test suite: bootstrap, then every test, including the ones that
# load BPF programs (run as root; CI does).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
"$root/scripts/bootstrap.sh"
# The container tests need a Docker daemon (no systemd here).
"$root/scripts/docker-up.sh"
# Default members only: agent/build.rs builds agent-ebpf for bpfel-unknown-none.
cargo build --all-targets
# Root tests share the kernel's probe state: one test binary at a time (the
# default), and the attach tests serialise themselves.
cargo test -- --test-threads=2
