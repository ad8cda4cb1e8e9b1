# keyward container images. Two targets:
#
#   docker build -t keyward:0.1.0 .                                   # the gRPC server (default)
#   docker build --target gateway -t keyward-gateway:0.1.0 .          # grpc-gateway REST sidecar
#
# Label and version the build with, e.g.:
#   --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#   --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" --build-arg SOURCE=https://…
#
# Works with the classic builder and BuildKit alike (no cache mounts). Both runtimes run as
# UID/GID 65532 with nothing but the binary added, contain no shell, and work with a read-only
# root filesystem. The bases can be swapped with --build-arg, e.g.
# RUNTIME_BASE=debian:bookworm-slim (keyward needs only glibc and libgcc_s from its base; the
# gateway is a static binary).

ARG RUST_VERSION=1.95
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
ARG GATEWAY_RUNTIME_BASE=gcr.io/distroless/static-debian12:nonroot

# --- keyward: build -----------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies are compiled in their own layer, redone only when Cargo.toml or Cargo.lock change:
# the manifest is built against stub sources (an empty library, a `fn main() {}` binary and
# build script, empty files for the test and bench targets the manifest names), which compiles
# every dependency and build-dependency (tonic-prost-build, the vendored protoc) of the
# `keyward` binary. The stub's own artifacts and fingerprints are then deleted: COPY keeps the
# context's modification times, which can be older than the stub build, and cargo would
# otherwise take the real sources for already built.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/integration benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > build.rs \
 && touch src/lib.rs tests/integration/main.rs benches/load.rs \
 && cargo build --release --locked --bin keyward \
 && rm -rf src build.rs target/release/keyward target/release/keyward.d \
      target/release/.fingerprint/keyward-* target/release/build/keyward-* \
      target/release/deps/keyward-* target/release/deps/libkeyward-*
# The real build script compiles proto/ (protoc from the protoc-bin-vendored crate, so no system
# protoc); the stand-ins for tests/ and benches/ stay, as `--bin keyward` never compiles them.
COPY build.rs ./
COPY proto proto
COPY src src
# The commit, for keyward_build_info (read at compile time). Declared here, after the dependency
# layer, so a new commit does not rebuild the dependencies.
ARG REVISION=unknown
RUN KEYWARD_BUILD_COMMIT="${REVISION}" cargo build --release --locked --bin keyward \
 && install -D -m 0755 target/release/keyward /out/keyward

# --- gateway: build -----------------------------------------------------------------------------
# The grpc-gateway sidecar is built offline from Debian's Go packages by scripts/gateway.sh, the
# same command developers run. The packages are installed here, in a cached layer, so the
# script's own idempotent install step finds them present; python3 is for its proto staging.
FROM debian:bookworm AS gateway-build
# Debian stable's versions are the pin: bookworm only takes security fixes, and exact version
# pins would break the build at each of those.
# hadolint ignore=DL3008
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
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="keyward-gateway" \
      org.opencontainers.image.description="REST/JSON gateway sidecar for keyward (grpc-gateway)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=gateway-build /out/keyward-gateway /usr/local/bin/keyward-gateway
USER 65532:65532
# REST/JSON on :8080 (--listen), GET /healthz and /readyz for probes; --grpc-endpoint (default
# localhost:50051) names keyward, which is where it is as a sidecar in keyward's pod.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keyward-gateway"]

# --- keyward: runtime (last, so a plain `docker build .` produces it) ----------------------------
FROM ${RUNTIME_BASE} AS keyward
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="keyward" \
      org.opencontainers.image.description="gRPC-native identity service with PASETO tokens and Envoy ext_authz" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/keyward /usr/local/bin/keyward
USER 65532:65532
# gRPC on 50051 (grpc_addr), Prometheus /metrics on 9090 (metrics_addr). TLS (MongoDB, SMTP,
# OpenID Connect providers) uses root certificates compiled into the binary, so the image needs
# no CA bundle. Kubernetes probes it with native gRPC probes (grpc.health.v1), so there is no
# HEALTHCHECK and no probe binary. Configuration comes from KEYWARD_* environment variables (or
# `serve --config FILE`).
EXPOSE 50051 9090
# The subcommand is the argument: `docker run IMAGE` serves; `docker run IMAGE migrate`,
# `... keys generate` and `... admin unlock --email …` run those. The absolute path works on
# bases whose image config sets no PATH.
ENTRYPOINT ["/usr/local/bin/keyward"]
CMD ["serve"]
