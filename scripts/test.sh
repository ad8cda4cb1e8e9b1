#!/usr/bin/env bash
# Runs keyward's full test suite on a fresh Debian machine with only the Rust toolchain:
# installs the test tools (scripts/setup.sh), then unit + integration tests against a real
# MongoDB-compatible server (or KEYWARD_TEST_MONGODB_URI), the real grpcurl, real SMTP (aiosmtpd)
# and the real grpc-gateway sidecar; the Helm chart and YAML checks (scripts/check-helm.sh); the
# API contract's lint, format and breaking checks (scripts/check-proto.sh); the dependency policy
# (deny.toml) and clippy with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/tool-path.sh
cargo fmt --all -- --check
scripts/check-helm.sh
scripts/check-proto.sh
# The dependency policy (deny.toml): permissive licences only, the default registry only.
cargo deny -L error check licenses bans sources
# Lints as errors, tests and bench included.
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"
