#!/usr/bin/env bash
# gmon-agent installed with its chart on a real Kubernetes node: builds the
# agent image from the Dockerfile (scripts/image.sh), brings up the
# one-node cluster (scripts/cluster.sh; reused if already up), runs the
# shared assertions (e2e/k8s/test_k8s.py) inside it, and takes the cluster
# down again, also when a step fails (a cluster that was already up is left
# up). Prints "k8s: N passed, N failed".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "test-k8s: run as root (it starts a kubelet)" >&2; exit 1; }
command -v bpftool >/dev/null || { echo "test-k8s: bpftool missing; run scripts/bootstrap.sh --tests" >&2; exit 1; }
work=$(mktemp -d)
was_up=
scripts/cluster.sh status >/dev/null 2>&1 && was_up=1
cleanup() {
  [ -n "$was_up" ] || scripts/cluster.sh down || true
  rm -rf "$work"
}
trap cleanup EXIT
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ref=gmon-agent:$version
s=$(date +%s)
scripts/image.sh "$work/gmon-agent.tar" "$ref"
echo "test-k8s: image built in $(($(date +%s) - s)) s" >&2
s=$(date +%s)
scripts/cluster.sh up
echo "test-k8s: cluster up in $(($(date +%s) - s)) s" >&2
scripts/cluster.sh exec -- env \
  GMON_K8S_LOAD="$root/scripts/cluster.sh load" \
  GMON_K8S_HOST_ADDR=10.250.0.1 \
  GMON_K8S_AGENT_IMAGE="$work/gmon-agent.tar" \
  GMON_K8S_AGENT_REF="$ref" \
  python3 e2e/k8s/test_k8s.py
