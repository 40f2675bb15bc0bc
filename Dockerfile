# syntax=docker/dockerfile:1.7
# Nexus API gateway image: build with cargo (dependencies cached in BuildKit
# cache mounts), then a FROM-scratch, non-root runtime holding only the binary,
# the shared libraries it links, and the default config. Ports: 8080 (gateway),
# 9090 (admin: probes, metrics, reload). Image size: ~15 MB.
#
#   docker build -t nexus:dev .
#   docker run --rm -p 8080:8080 -p 9090:9090 nexus:dev
#
# Mount your config at /etc/nexus/nexus.yaml (a ConfigMap in Kubernetes).

ARG RUST_VERSION=1.88
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Release profile: fat LTO, one codegen unit, stripped symbols (Cargo.toml).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nexus-bin \
    && scripts/image-rootfs.sh target/release/nexus /rootfs

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
# The admin listener must be reachable by the kubelet and Prometheus inside a pod.
ENV NEXUS_ADMIN_LISTEN=0.0.0.0:9090
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/nexus"]
CMD ["--config", "/etc/nexus/nexus.yaml"]
