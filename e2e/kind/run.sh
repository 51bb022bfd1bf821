#!/usr/bin/env bash
# The chart's end-to-end test on a kind cluster, for machines that can pull
# kind's node image (this project's own machines cannot: CI runs the offline
# one-node cluster, scripts/test-k8s.sh, with the same assertions).
#
#   e2e/kind/run.sh          as root (the assertions read the node's /proc and BPF state)
#
# Needs kind, kubectl, helm, docker, bpftool and the bootstrap's test servers
# (scripts/bootstrap.sh --tests). Creates the cluster, builds and loads the
# image, runs e2e/k8s/test_k8s.py, deletes the cluster (also on failure).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
name=gmon-test
for c in kind kubectl helm docker bpftool; do
  command -v "$c" >/dev/null || { echo "kind/run: $c not found" >&2; exit 1; }
done
work=$(mktemp -d)
cleanup() { kind delete cluster --name "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
kind create cluster --name "$name" --config e2e/kind/cluster.yaml --kubeconfig "$work/kubeconfig" --wait 120s
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ref=gmon-agent:$version
scripts/image.sh "$work/gmon-agent.tar" "$ref"
# Pods reach this machine at the kind network's gateway.
gateway=$(docker network inspect kind -f '{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}' |
  tr ' ' '\n' | grep -m1 -E '^[0-9]+\.')
KUBECONFIG="$work/kubeconfig" \
GMON_K8S_LOAD="kind load image-archive --name $name" \
GMON_K8S_HOST_ADDR="$gateway" \
GMON_K8S_AGENT_IMAGE="$work/gmon-agent.tar" \
GMON_K8S_AGENT_REF="$ref" \
  python3 e2e/k8s/test_k8s.py
