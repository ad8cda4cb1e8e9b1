# keyward container images (BuildKit, the default builder of current Docker). Two targets:
#
#   docker build -t keyward:0.1.0 .                                   # the gRPC server (default)
#   docker build --target gateway -t keyward-gateway:0.1.0 .          # grpc-gateway REST sidecar
#
# Both runtimes run as UID/GID 65532 with nothing but the binary added, contain no shell, and
# work with a read-only root filesystem. The bases can be swapped with --build-arg, e.g.
# RUNTIME_BASE=debian:bookworm-slim (keyward needs only glibc and libgcc_s from its base; the
# gateway is a static binary).

ARG RUST_VERSION=1.95
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
ARG GATEWAY_RUNTIME_BASE=gcr.io/distroless/static-debian12:nonroot

# --- keyward: build -----------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies are downloaded in their own layer, redone only when Cargo.toml or Cargo.lock
# change. Cargo.toml declares an integration test and a bench besides the binary; empty stand-ins
# for their files let cargo read the manifest, and they stay: `--bin keyward` never compiles them,
# so edits under tests/ and benches/ do not invalidate the build.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/integration benches \
 && touch src/lib.rs src/main.rs tests/integration/main.rs benches/load.rs \
 && cargo fetch --locked
# protoc comes from the protoc-bin-vendored crate (build.rs), so no system protoc is needed.
COPY build.rs ./
COPY proto proto
COPY src src
# The cache mount keeps compiled dependencies between builds on the same builder; the binary is
# copied out of it because the mount is not part of the image.
RUN --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --offline --bin keyward \
 && install -D -m 0755 target/release/keyward /out/keyward

# --- gateway: build -----------------------------------------------------------------------------
# The grpc-gateway sidecar is built offline from Debian's Go packages by scripts/gateway.sh, the
# same command developers run. The packages are installed here, in a cached layer, so the
# script's own idempotent install step finds them present; python3 is for its proto staging.
FROM debian:bookworm AS gateway-build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      golang-go golang-grpc-gateway golang-github-grpc-ecosystem-grpc-gateway-dev \
      golang-google-grpc-dev golang-goprotobuf-dev golang-google-genproto-dev protobuf-compiler \
      python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY proto proto
COPY gateway gateway
COPY scripts/gateway.sh scripts/gateway.sh
# Static, so the runtime image needs nothing from the build stage but the file itself.
ENV CGO_ENABLED=0
RUN scripts/gateway.sh build \
 && install -D -m 0755 target/gateway/keyward-gateway /out/keyward-gateway

# --- gateway: runtime ---------------------------------------------------------------------------
FROM ${GATEWAY_RUNTIME_BASE} AS gateway
COPY --from=gateway-build /out/keyward-gateway /usr/local/bin/keyward-gateway
USER 65532:65532
# REST/JSON on :8080 (--listen), GET /healthz for probes; --grpc-endpoint (default
# localhost:50051) names keyward, which is where it is as a sidecar in keyward's pod.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keyward-gateway"]

# --- keyward: runtime (last, so a plain `docker build .` produces it) ----------------------------
FROM ${RUNTIME_BASE} AS keyward
COPY --from=build /out/keyward /usr/local/bin/keyward
USER 65532:65532
# grpc_addr defaults to 0.0.0.0:50051. TLS (MongoDB, SMTP) uses root certificates compiled into
# the binary, so the image needs no CA bundle. Kubernetes probes it with native gRPC probes
# (grpc.health.v1), so there is no HEALTHCHECK and no probe binary. Configuration comes from
# KEYWARD_* environment variables (or `serve --config FILE`).
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/keyward", "serve"]
