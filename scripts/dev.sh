#!/usr/bin/env bash
# Runs keyward in dev mode on a fresh Debian machine with only the Rust toolchain.
# Starts a local MongoDB-compatible server (secantusd-rs, data in .keyward-dev/mongo) unless
# KEYWARD_MONGODB_URI is set, uses a generated dev signing key, and prints how to call it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/tool-path.sh

export KEYWARD_GRPC_ADDR="${KEYWARD_GRPC_ADDR:-127.0.0.1:50051}"
export KEYWARD_METRICS_ADDR="${KEYWARD_METRICS_ADDR-127.0.0.1:9090}"
mkdir -p .keyward-dev
if [ -z "${KEYWARD_MONGODB_URI:-}" ]; then
  mongo_port="${KEYWARD_DEV_MONGO_PORT:-27018}"
  secantusd-rs --port "$mongo_port" --storage-path .keyward-dev/mongo --log-file-max 16MB \
    --cache-size 256M --log-level WARNING > .keyward-dev/mongo.log 2>&1 &
  mongo_pid=$!
  trap 'kill $mongo_pid 2>/dev/null || true' EXIT
  export KEYWARD_MONGODB_URI="mongodb://127.0.0.1:${mongo_port}/?directConnection=true"
  echo "dev: local MongoDB-compatible server (secantusd-rs) on 127.0.0.1:${mongo_port}, data in .keyward-dev/mongo"
fi

cargo build --locked --release --bin keyward
addr="$KEYWARD_GRPC_ADDR"
data_dir="${KEYWARD_DATA_DIR:-.keyward-dev}"
case "$data_dir" in /*) ;; *) data_dir="$PWD/$data_dir" ;; esac
echo
echo "keyward (dev mode) on $addr${KEYWARD_METRICS_ADDR:+ (metrics: http://$KEYWARD_METRICS_ADDR/metrics)}. Try, in another shell:"
scripts/dev-walkthrough.sh "$addr" "$data_dir/mail" | sed 's/^/  /'
echo "(grpcurl was installed by scripts/setup.sh; if your shell does not find it: source $PWD/scripts/tool-path.sh)"
echo
# Not exec: the trap above stops the database when keyward exits.
target/release/keyward serve --dev "$@"
