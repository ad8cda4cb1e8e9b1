#!/usr/bin/env bash
# Runs schemathesis (property-based API testing driven by an OpenAPI file), pinned, installing it
# first when missing. The REST fuzz test (tests/integration/rest_fuzz.rs) runs it against the real
# gateway; gateway/README.md shows how to run a longer campaign by hand.
#
#   scripts/schemathesis.sh --version                      install only (scripts/setup.sh does this)
#   scripts/schemathesis.sh run gateway/openapi/keyward.swagger.json --url http://127.0.0.1:8080 ...
#
# Arguments go to `python3 -m schemathesis.cli` as they are. Installs its Python packages once,
# every version pinned, into target/tools/schemathesis (pip --target, so the system Python stays
# untouched); installs python3-pip with apt if pip is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

TOOLS="${KEYWARD_SCHEMATHESIS_DIR:-$ROOT/target/tools/schemathesis}"
# schemathesis and everything it pulls in, at the versions it was tested with: hypothesis and
# the JSON Schema libraries decide which requests a seed generates.
REQUIREMENTS=(schemathesis==4.32.5 hypothesis==6.170.17 hypothesis-graphql==0.13.5
  jsonschema-rs==0.60.3 anyio==4.16.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3
  click==8.5.1 graphql-core==3.3.2 harfile==0.6.0 idna==3.20 iniconfig==2.3.1
  markdown-it-py==4.3.0 markupsafe==3.0.4 mdurl==0.1.2 packaging==26.4 pluggy==1.7.0
  pygments==2.21.0 pyrate-limiter==4.5.1 pytest==9.2.0 pyyaml==6.0.4 requests==2.34.2
  rich==15.0.0 sortedcontainers==2.4.0 typing-extensions==4.16.0 urllib3==2.8.0 werkzeug==3.1.9)

install() {
  local stamp="$TOOLS/.requirements"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${REQUIREMENTS[*]}" ] && return
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "schemathesis: installing Debian package python3-pip" >&2
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq python3-pip >/dev/null
  fi
  echo "schemathesis: installing ${REQUIREMENTS[0]} into ${TOOLS#"$ROOT"/}" >&2
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore --target "$TOOLS" "${REQUIREMENTS[@]}" >&2
  echo "${REQUIREMENTS[*]}" >"$stamp"
}

# One install at a time: tests may start this in parallel.
mkdir -p "$(dirname "$TOOLS")"
(
  flock 9
  install
) 9>"$TOOLS.lock"

export PYTHONPATH="$TOOLS${PYTHONPATH:+:$PYTHONPATH}"
# The pinned copies, not whatever versions the user's site-packages may also have.
export PYTHONNOUSERSITE=1
exec python3 -m schemathesis.cli "$@"
