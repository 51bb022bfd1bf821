#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for the tests and for
# people: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kube-proxy and a kubelet (v1.20.2, built by scripts/build-k8s.sh), a
# private containerd with its CRI plugin, and the CNI bridge, all inside a
# private network and mount namespace.
#
#   scripts/cluster.sh up               build once (cached), start, wait for the node to be Ready
#   scripts/cluster.sh exec -- CMD...   run CMD inside the cluster's namespaces with KUBECONFIG,
#                                       kubectl 1.20.2 and helm on PATH (pod IPs are reachable there)
#   scripts/cluster.sh load IMAGE.tar   import an image archive (docker save format) into the node
#   scripts/cluster.sh down             stop everything and restore the host
#   scripts/cluster.sh status
#
# What it touches on the host, and how down restores it:
#   - processes: all of them run inside the private namespaces; down kills
#     every process in that network namespace (none is anyone else's);
#   - network: nothing (interfaces, addresses, routes and iptables rules
#     live in the private network namespace and vanish with it);
#   - mounts: nothing (made in the private mount namespace);
#   - directories kubelet and containerd insist on (/var/lib/kubelet,
#     /var/lib/cni, /var/log/pods, /var/log/containers, /run/netns,
#     /run/containerd, /usr/libexec/kubernetes): inside the namespace a
#     private folder is mounted over each, so nothing is written to them;
#     one that did not exist is created empty as a mount point and removed;
#   - cgroups: kubelet gets its own root, /gmon-agent-test-k8s in every
#     hierarchy, removed by down (other cgroups are never touched);
#   - sysctls kubelet rewrites (vm.overcommit_memory, vm.panic_on_oom,
#     kernel.panic, kernel.panic_on_oops, kernel.keys.*): recorded by up,
#     restored by down;
#   - state and logs: /var/cache/gmon-agent/cluster/run (kept after down
#     for post-mortems, wiped by the next up).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=/var/cache/gmon-agent
k8s=$cache/k8s
bin=$k8s/bin
run=$cache/cluster/run
node=gmon-node
node_ip=10.250.0.1
pod_cidr=10.244.0.0/24
svc_cidr=10.96.0.0/16
cgroot=gmon-agent-test-k8s
hostdirs=(/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/netns
          /run/containerd /usr/libexec/kubernetes)
sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
         kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
export PATH=$bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

step=
log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
holder() { cat "$run/holder.pid" 2>/dev/null; }
alive() { local p; p=$(holder) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
# Runs a command inside the cluster's network and mount namespaces.
ns() { nsenter -t "$(holder)" -n -m -- "$@"; }
ctr_() { ns ctr --address "$run/ctr/containerd.sock" -n k8s.io "$@"; }
kubectl_() { ns env KUBECONFIG="$run/kubeconfig" kubectl "$@"; }
start() { # name command...: a daemon inside the namespaces, logged and recorded
  local name=$1; shift
  setsid nsenter -t "$(holder)" -n -m -- "$@" >"$run/logs/$name.log" 2>&1 </dev/null &
  echo "$! $name" >>"$run/pids"
}
waitfor() { # what seconds command...
  local what=$1 n=$2; shift 2
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "timed out after ${n}s waiting for $what (logs: $run/logs/)"
}

cmd_up() {
  if alive && kubectl_ get --raw /readyz >/dev/null 2>&1; then
    log "already up"; info; return 0
  fi
  [ "$(id -u)" = 0 ] || die "must run as root (it starts a kubelet); re-run with sudo"
  "$root/scripts/build-k8s.sh"
  for c in containerd runc ctr iptables openssl nsenter unshare; do
    command -v "$c" >/dev/null || die "$c not found; run scripts/bootstrap.sh first"
  done
  alive && cmd_down
  rm -rf "$run"
  mkdir -p "$run"/{logs,pki,etcd,ctr/root,ctr/state,kubelet,cni/net.d,cni/ipam,hostdirs}
  : >"$run/pids"
  trap 'rc=$?; if [ $rc != 0 ]; then log "up failed (step: $step); restoring the host"; cmd_down; fi' EXIT

  step="record host state"
  for k in "${sysctls[@]}"; do echo "$k=$(sysctl -n "$k")"; done >"$run/sysctl.before"
  : >"$run/newdirs"
  for d in "${hostdirs[@]}"; do
    [ -e "$d" ] || { mkdir -p "$d" && echo "$d" >>"$run/newdirs"; }
  done

  step="private namespaces"
  setsid unshare --net --mount --propagation private sleep infinity </dev/null >/dev/null 2>&1 &
  echo $! >"$run/holder.pid"
  waitfor "namespace holder" 10 sh -c "[ \"\$(readlink /proc/$(holder)/ns/net)\" != \"\$(readlink /proc/self/ns/net)\" ]"
  ns ip link set lo up
  ns ip link add gmon0 type veth peer name gmon1 # no dummy driver in every kernel
  ns ip addr add "$node_ip/24" dev gmon0
  ns ip link set gmon1 up
  ns ip link set gmon0 up
  ns ip route add default dev gmon0
  ns sysctl -qw net.ipv4.ip_forward=1
  for d in "${hostdirs[@]}"; do
    local priv=$run/hostdirs/${d//\//_}
    mkdir -p "$priv"
    ns mount --bind "$priv" "$d"
  done

  step="certificates"
  local pki=$run/pki
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=gmon-test-ca \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  cat >"$pki/apiserver.ext" <<EXT
subjectAltName=IP:$node_ip,IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EXT
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$pki/apiserver.key" \
    -out "$pki/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  local token; token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,admin,admin,system:masters" >"$pki/tokens.csv"
  cat >"$run/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: gmon-test, cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$pki/ca.crt"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: gmon-test, context: {cluster: gmon-test, user: admin}}]
current-context: gmon-test
EOF

  step="etcd"
  start etcd "$k8s/root/usr/bin/etcd" --data-dir "$run/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380
  waitfor etcd 30 ns curl -sf http://127.0.0.1:2379/health

  step="kube-apiserver"
  start kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --advertise-address="$node_ip" --secure-port=6443 \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" --authorization-mode=Node,RBAC \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$svc_cidr" --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP
  waitfor kube-apiserver 90 kubectl_ get --raw /readyz

  step="controllers and scheduler"
  local kc=$run/kubeconfig
  start kube-controller-manager kube-controller-manager --kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" --leader-elect=false \
    --port=0 --bind-address=127.0.0.1 --root-ca-file="$pki/ca.crt" \
    --service-account-private-key-file="$pki/sa.key" --use-service-account-credentials=false \
    --controllers='*' --cluster-cidr="$pod_cidr"
  start kube-scheduler kube-scheduler --kubeconfig="$kc" --authentication-kubeconfig="$kc" \
    --authorization-kubeconfig="$kc" --leader-elect=false --port=0 --bind-address=127.0.0.1

  step="containerd"
  cat >"$run/cni/net.d/10-gmon.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "gmon-test", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$run/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  cat >"$run/containerd.toml" <<EOF
version = 2
root = "$run/ctr/root"
state = "$run/ctr/state"
[grpc]
  address = "$run/ctr/containerd.sock"
[ttrpc]
  address = "$run/ctr/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "localhost/gmon-agent-test/pause:3.4.1"
    stream_server_address = "127.0.0.1"
    disable_apparmor = true
    # Without CAP_SYS_RESOURCE (this sandbox) runc cannot lower oom_score_adj.
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$k8s/cni"
      conf_dir = "$run/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "$run/ctr/opt"
EOF
  start containerd containerd --config "$run/containerd.toml"
  waitfor containerd 30 ctr_ version
  ctr_ images import "$k8s/pause.tar" >/dev/null

  step="kube-proxy"
  start kube-proxy kube-proxy --kubeconfig="$kc" --hostname-override="$node" \
    --cluster-cidr="$pod_cidr" --proxy-mode=iptables --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256

  step="kubelet"
  local h
  for h in /sys/fs/cgroup/*/; do
    case $h in */unified/) ;; *) mkdir -p "$h$cgroot" ;; esac
  done
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$cgroot/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$cgroot/cpuset.mems"
  start kubelet kubelet --kubeconfig="$kc" --container-runtime=remote \
    --container-runtime-endpoint="unix://$run/ctr/containerd.sock" --root-dir="$run/kubelet" \
    --cert-dir="$run/kubelet/pki" --volume-plugin-dir="$run/kubelet/volume-plugins" \
    --cgroup-driver=cgroupfs --cgroup-root="/$cgroot" --hostname-override="$node" \
    --node-ip="$node_ip" --make-iptables-util-chains=false --address=0.0.0.0 \
    --healthz-bind-address=127.0.0.1 --read-only-port=0 --fail-swap-on=false \
    --eviction-hard='nodefs.available<1%,imagefs.available<1%,memory.available<100Mi' \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --pod-infra-container-image=localhost/gmon-agent-test/pause:3.4.1 -v=1
  waitfor "node Ready" 120 ns sh -c "KUBECONFIG=$kc kubectl get node $node -o \
    jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' 2>/dev/null | grep -q True"
  waitfor "default service account" 60 kubectl_ get serviceaccount default
  step=done
  trap - EXIT
  info
}

info() {
  log "node $node is Ready ($(kubectl_ version --short 2>/dev/null | tr '\n' ' '))"
  cat >&2 <<EOF
cluster: reach it with
  scripts/cluster.sh exec -- kubectl get pods -A
  scripts/cluster.sh exec -- helm list -A
  scripts/cluster.sh exec -- bash      (a shell with KUBECONFIG=$run/kubeconfig)
cluster: logs in $run/logs/; stop with scripts/cluster.sh down
EOF
}

cmd_exec() {
  [ "${1:-}" = -- ] && shift
  [ $# -gt 0 ] || die "usage: scripts/cluster.sh exec -- CMD [ARGS...]"
  alive || die "the cluster is not up; run scripts/cluster.sh up"
  exec nsenter -t "$(holder)" -n -m --wd="$PWD" -- env KUBECONFIG="$run/kubeconfig" PATH="$PATH" \
    GMON_CLUSTER_RUN="$run" HELM_CACHE_HOME="$run/helm/cache" HELM_CONFIG_HOME="$run/helm/config" \
    HELM_DATA_HOME="$run/helm/data" "$@"
}

cmd_load() {
  [ $# = 1 ] && [ -f "$1" ] || die "usage: scripts/cluster.sh load IMAGE.tar (an existing docker-archive)"
  alive || die "the cluster is not up; run scripts/cluster.sh up"
  local f; f=$(realpath "$1")
  ctr_ images import "$f" >&2 || die "cannot import $1 into the node's containerd"
}

cmd_down() {
  local p name
  if alive; then
    local netns; netns=$(readlink "/proc/$(holder)/ns/net")
    stop_named() {
      awk -v n="$1" '$2 == n { print $1 }' "$run/pids" | while read -r p; do
        kill "$p" 2>/dev/null || continue
        for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$p" 2>/dev/null || true
      done
    }
    stop_named kubelet
    if ctr_ version >/dev/null 2>&1; then
      for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
      sleep 1
      for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks rm -f "$c" >/dev/null 2>&1 || true; done
    fi
    for name in containerd kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
      stop_named "$name"
    done
    # Whatever still runs in the private network namespace (shims, container
    # processes) was started by this cluster.
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$netns" ] || continue
      [ "${p#/proc/}" = "$(holder)" ] && continue
      kill -9 "${p#/proc/}" 2>/dev/null || true
    done
    kill "$(holder)" 2>/dev/null || true
    for _ in $(seq 1 20); do alive || break; sleep 0.2; done
  fi
  # Cgroups: only kubelet's own root, deepest first, once their tasks are gone.
  local h
  for h in /sys/fs/cgroup/*/"$cgroot"; do
    [ -d "$h" ] || continue
    for _ in $(seq 1 20); do
      find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$h" ] || break
      sleep 0.5
    done
    [ -d "$h" ] && log "warning: could not remove $h"
  done
  if [ -f "$run/newdirs" ]; then
    while read -r d; do rmdir "$d" 2>/dev/null || log "warning: $d is not empty; left in place"; done <"$run/newdirs"
    rm -f "$run/newdirs"
  fi
  if [ -f "$run/sysctl.before" ]; then
    while IFS== read -r k v; do sysctl -qw "$k=$v"; done <"$run/sysctl.before"
    rm -f "$run/sysctl.before"
  fi
  rm -f "$run/holder.pid"
  log "down"
}

cmd_status() {
  if alive; then kubectl_ get nodes -o wide; else echo "down"; exit 1; fi
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  exec) shift; cmd_exec "$@" ;;
  load) shift; cmd_load "$@" ;;
  status) cmd_status ;;
  *) echo "usage: scripts/cluster.sh up|down|status|exec -- CMD...|load IMAGE.tar" >&2; exit 2 ;;
esac
