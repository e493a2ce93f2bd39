# syntax=docker/dockerfile:1.7
#
# The rstore `node` image: one cluster member (`node serve`) and the client CLI (`node kv ...`).
# Built from the workspace root:  make image-node  (or: docker build -f docker/node.Dockerfile .)
#
# Runtime: distroless cc (glibc + libgcc, no shell, no package manager), user 65532 (nonroot).
# The binary writes only to its data directory (/data, a PersistentVolumeClaim under the
# operator), so the container runs with a read-only root filesystem.

# Pinned toolchain: the workspace's highest rust-version (operator: 1.89).
ARG RUST_IMAGE=rust:1.89-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target dir between builds (shared with the operator
# image, so the second image reuses the dependencies the first one compiled).
RUN --mount=type=cache,id=rstore-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=rstore-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p node --bin node \
 && install -D -m 0755 target/release/node /out/node

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="rstore-node" \
      org.opencontainers.image.description="rstore: one member of a replicated key-value store cluster (Raft over its own write-ahead log)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/node /usr/local/bin/node
# Numeric, so that `runAsNonRoot: true` can be verified by the kubelet.
USER 65532:65532
# client (KV, admin, /healthz, /readyz, /metrics) and peer (Raft RPC only)
EXPOSE 7379 7380
ENV RSTORE_DATA_DIR=/data \
    RSTORE_LISTEN_CLIENT=0.0.0.0:7379 \
    RSTORE_LISTEN_PEER=0.0.0.0:7380 \
    RSTORE_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/node"]
# The operator passes the full `serve` command line (advertise URLs are per pod); a bare
# `docker run` needs --advertise-client/--advertise-peer because it listens on 0.0.0.0.
CMD ["serve"]
