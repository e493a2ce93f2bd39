# syntax=docker/dockerfile:1.7
#
# The rstore `operator` image: the ReplicatedStore controller (`operator run`), which also
# prints its CRD (`operator crd`).
# Built from the workspace root:  make image-operator  (or: docker build -f docker/operator.Dockerfile .)
#
# Runtime: distroless cc, user 65532 (nonroot), read-only root filesystem: the operator keeps
# no state on disk (everything lives in the Kubernetes API).

# Pinned toolchain: kube 4.2 needs Rust 1.89 (operator/Cargo.toml rust-version).
ARG RUST_IMAGE=rust:1.89-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# cmake and clang: TLS stacks of Kubernetes clients (aws-lc-rs, ring) may build C code.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=rstore-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=rstore-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p operator --bin operator \
 && install -D -m 0755 target/release/operator /out/operator

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="rstore-operator" \
      org.opencontainers.image.description="rstore: Kubernetes operator for ReplicatedStore clusters" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/operator /usr/local/bin/operator
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/operator"]
CMD ["run"]
