#!/usr/bin/env bash
# Checks keyward's API contract (proto/) with buf, pinned in scripts/buf/ (scripts/setup.sh
# installs it): the STANDARD lint rules (buf.yaml), buf's formatting, and no breaking change
# against the frozen v1 contract in proto/keyward-v1.binpb. Offline, and independent of git
# history and tags, so it works the same on a fresh clone.
#
#   scripts/check-proto.sh             lint, format check, breaking check
#   scripts/check-proto.sh format      rewrite the protos in buf's format
#   scripts/check-proto.sh freeze      rewrite proto/keyward-v1.binpb from the protos as they are
#
# `freeze` is for a deliberate, documented break only: an additive change (a new field, message
# or RPC) passes the breaking check as it is and needs no new baseline. A break in keyward.v1
# means a release note that names it, and the new baseline committed with the change that makes
# it; a larger one means a keyward.v2 package next to v1 instead.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=scripts/buf/node_modules/.bin/buf
BASELINE=proto/keyward-v1.binpb
if [ ! -x "$BUF" ]; then
  echo "check-proto: buf is not installed; run scripts/setup.sh" >&2
  exit 1
fi

case "${1:-check}" in
  check)
    "$BUF" lint
    "$BUF" format --diff --exit-code
    "$BUF" breaking proto --against "$BASELINE"
    echo "check-proto: lint, format and breaking checks passed" >&2
    ;;
  format)
    "$BUF" format --write
    ;;
  freeze)
    # Without source info (comments and positions): the breaking check needs neither, and the
    # file then changes only when the contract does.
    "$BUF" build proto --exclude-source-info -o "$BASELINE"
    echo "check-proto: wrote $BASELINE" >&2
    ;;
  *)
    echo "usage: scripts/check-proto.sh [check|format|freeze]" >&2
    exit 2
    ;;
esac
