# gmon-agent's container image: one static binary FROM scratch, plus the CA
# bundle for https:// OTLP endpoints. It runs as UID 0 without privileged:
# the pod spec grants the capabilities (see charts/gmon-agent).
#
# From source, on a machine that can pull base images:
#   docker build -t gmon-agent:0.1.0 .
# From a binary built on this host, with no base image at all (what the
# tests do; scripts/image.sh wraps it and writes an image archive):
#   scripts/image.sh gmon-agent.tar
#   # = build the static binary, then
#   DOCKER_BUILDKIT=1 docker build --build-arg AGENT_SOURCE=host -t gmon-agent:0.1.0 .
# Both paths end in the same runtime stage.

# `source` builds in a builder stage; `host` takes target/image/rootfs from
# the build context (scripts/image.sh fills it).
ARG AGENT_SOURCE=source

FROM rust:1.95-bookworm AS source
ARG BPF_LINKER_VERSION=0.13.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev \
      clang make ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The eBPF programs build with nightly's rust-src (-Z build-std) and bpf-linker.
RUN rustup toolchain install nightly --profile minimal --component rust-src \
 && LLVM_PREFIX=/usr/lib/llvm-22 PATH=/usr/lib/llvm-22/bin:$PATH \
      cargo install --locked bpf-linker --version ${BPF_LINKER_VERSION} \
        --no-default-features --features llvm-22
WORKDIR /src
COPY . .
# Static glibc: the runtime stage has no libc of its own.
RUN CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --locked --release -p agent --bin gmon-agent --target x86_64-unknown-linux-gnu \
 && mkdir -p /out/usr/bin /out/etc/ssl/certs \
 && cp target/x86_64-unknown-linux-gnu/release/gmon-agent /out/usr/bin/ \
 && strip /out/usr/bin/gmon-agent \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/

FROM scratch AS host
COPY target/image/rootfs/ /out/

FROM ${AGENT_SOURCE} AS agent

FROM scratch
ARG VERSION=0.1.0
COPY --from=agent /out/ /
LABEL org.opencontainers.image.title="gmon-agent" \
      org.opencontainers.image.description="eBPF goroutine monitor for every Go program on a Kubernetes node" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/gmon-agent"
USER 0
ENTRYPOINT ["/usr/bin/gmon-agent"]
