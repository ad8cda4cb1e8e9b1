#!/usr/bin/env bash
# Prints keyward's load benchmark (see benches/load.rs). Extra arguments go to the bench,
# e.g. `scripts/bench.sh --seconds 10`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo bench --locked --bench load -- "$@"
