#!/usr/bin/env bash
# Regenerates proto/vendor/envoy_ext_authz.binpb: the descriptors of Envoy's
# envoy.service.auth.v3.Authorization (ext_authz) and everything it imports, compiled from the
# protos inside the envoy-types crate keyward builds against, so that the reflection service can
# describe the Check RPC keyward serves (`grpcurl describe envoy.service.auth.v3.Authorization`).
# Run it after changing the envoy-types version. Needs protoc (scripts/gateway.sh installs
# Debian's) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
manifest=$(cargo metadata --format-version 1 --locked \
  | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "envoy-types"))')
protos="$(dirname "$manifest")/proto"
includes=()
for dir in data-plane-api xds protoc-gen-validate googleapis cel-spec/proto; do
  includes+=(-I "$protos/$dir")
done
mkdir -p proto/vendor
protoc "${includes[@]}" --include_imports \
  --descriptor_set_out=proto/vendor/envoy_ext_authz.binpb \
  envoy/service/auth/v3/external_auth.proto
echo "wrote proto/vendor/envoy_ext_authz.binpb"
