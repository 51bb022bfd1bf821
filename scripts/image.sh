#!/usr/bin/env bash
# Builds the agent image from a binary built on this host (the Dockerfile's
# offline path: no base image is pulled) and writes it as an image archive
# that `docker load`, `ctr images import` and `scripts/cluster.sh load`
# accept, with its name:tag inside.
#
#   scripts/image.sh OUT.tar [NAME:TAG]     (default gmon-agent:<crate version>)
#
# Needs Docker (scripts/docker-up.sh starts a daemon when none runs). The
# client is Debian's (the bootstrap installs it), whose BuildKit needs no
# buildx plugin; DOCKER=... picks another.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ $# -ge 1 ] || { echo "usage: scripts/image.sh OUT.tar [NAME:TAG]" >&2; exit 2; }
out=$1
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ref=${2:-gmon-agent:$version}
export PATH="$HOME/.cargo/bin:$PATH"
target_dir=${CARGO_TARGET_DIR:-$root/target}

# A static binary: the image has no libc.
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --release -q -p agent --bin gmon-agent --target x86_64-unknown-linux-gnu
bin=$target_dir/x86_64-unknown-linux-gnu/release/gmon-agent
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
  echo "image: $bin is dynamically linked; the image needs a static binary" >&2
  exit 1
fi

rootfs=$root/target/image/rootfs
rm -rf "$rootfs" && mkdir -p "$rootfs/usr/bin" "$rootfs/etc/ssl/certs"
strip -o "$rootfs/usr/bin/gmon-agent" "$bin"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"

"$root/scripts/docker-up.sh"
docker=${DOCKER:-/usr/bin/docker}
DOCKER_BUILDKIT=1 "$docker" build -q --build-arg AGENT_SOURCE=host --build-arg VERSION="$version" \
  -t "$ref" . >/dev/null
"$docker" save -o "$out" "$ref"
size=$("$docker" image inspect -f '{{.Size}}' "$ref")
echo "image: $ref ($((size / 1024 / 1024)) MiB) written to $out" >&2
