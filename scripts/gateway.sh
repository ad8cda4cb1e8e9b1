#!/usr/bin/env bash
# Builds keyward's REST sidecar (grpc-gateway) offline from Debian packages, and keeps its OpenAPI
# file in step with the protos and gateway/keyward.yaml.
#
#   scripts/gateway.sh build     target/gateway/keyward-gateway (skipped when no input changed)
#   scripts/gateway.sh openapi   rewrite gateway/openapi/keyward.swagger.json (committed)
#   scripts/gateway.sh check     fail when that file, or the route table, is out of date
#
# Each command first installs, idempotently, the Debian packages it needs (Go, grpc-gateway v1,
# grpc-go, golang/protobuf 1.3, protoc). Nothing is downloaded besides those packages: Go builds
# in GOPATH mode against /usr/share/gocode with the module proxy off. Generated code lives only
# under target/gateway/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PACKAGES=(golang-go golang-grpc-gateway golang-github-grpc-ecosystem-grpc-gateway-dev
  golang-google-grpc-dev golang-goprotobuf-dev golang-google-genproto-dev protobuf-compiler)
OUT="$ROOT/target/gateway"
CONFIG="$ROOT/gateway/keyward.yaml"
OPENAPI="$ROOT/gateway/openapi/keyward.swagger.json"
GOPATH_DIR="$OUT/gopath"
# The Go import path of the generated code (the protos' go_package); gateway/main.go imports it.
GEN_IMPORT="keyward/gen/keywardv1"
# Debian's timestamp.proto names the newer protobuf module's package as its go_package; the Go
# protobuf Debian ships with grpc-gateway v1 is golang/protobuf 1.3, which has it here.
WKT_MAP="Mgoogle/protobuf/timestamp.proto=github.com/golang/protobuf/ptypes/timestamp"

say() { echo "gateway: $*" >&2; }

# One run at a time: every command stages the protos into the same $OUT/proto (tests run
# `build` and `check` in parallel).
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing Debian packages: ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  # One retry: an interrupted unpack leaves dpkg needing a second pass.
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null ||
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The protos as Debian's plugins can read them, in $OUT/proto. One mechanical rewrite of a copy:
# proto3 `optional` fields become the one-field oneof `_name` that `optional` stands for (the
# same wire format and presence, so "unset" and "empty" stay apart through REST);
# protoc-gen-go 1.3 predates `optional` and protoc refuses to hand it such files. The field's
# comment moves inside the oneof so the OpenAPI file keeps it. (The Go import path is the
# protos' own go_package, $GEN_IMPORT.)
stage_protos() {
  local f
  for f in proto/keyward/v1/*.proto; do
    grep -qF "option go_package = \"$GEN_IMPORT;keywardv1\";" "$f" || {
      say "$f: go_package must be \"$GEN_IMPORT;keywardv1\" (gateway/main.go imports it)"
      return 1
    }
  done
  rm -rf "$OUT/proto"
  mkdir -p "$OUT/proto"
  cp -r proto/. "$OUT/proto/"
  python3 - "$OUT"/proto/keyward/v1/*.proto <<'PY'
import re, sys
files = sys.argv[1:]
optional = re.compile(r"^(\s*)optional\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;(.*)$")
for path in files:
    out = []
    for line in open(path).read().split("\n"):
        m = optional.match(line)
        if m:
            indent, typ, name, number, rest = m.groups()
            comments = []
            while out and out[-1].strip().startswith("//"):
                comments.insert(0, out.pop())
            out.append(f"{indent}oneof _{name} {{")
            out.extend("  " + c for c in comments)
            out.append(f"{indent}  {typ} {name} = {number};{rest}")
            out.append(f"{indent}}}")
        else:
            out.append(line)
    open(path, "w").write("\n".join(out))
PY
}

proto_files() { (cd "$OUT/proto" && ls keyward/v1/*.proto); }

# Every RPC of the services must have an http rule: without one grpc-gateway silently leaves
# the RPC out of REST.
check_routes() {
  local rpcs rules missing
  rpcs=$(for f in proto/keyward/v1/*_service.proto; do
    svc=$(sed -nE 's/^service[[:space:]]+([A-Za-z0-9_]+).*/\1/p' "$f")
    sed -nE "s/^[[:space:]]*rpc[[:space:]]+([A-Za-z0-9_]+).*/keyward.v1.$svc.\1/p" "$f"
  done | sort)
  rules=$(sed -nE 's/^[[:space:]]*-[[:space:]]*selector:[[:space:]]*([A-Za-z0-9_.]+).*/\1/p' "$CONFIG" | sort)
  missing=$(comm -23 <(echo "$rpcs") <(echo "$rules"))
  if [ -n "$missing" ]; then
    say "RPCs without an http rule in gateway/keyward.yaml:"
    echo "$missing" >&2
    return 1
  fi
  local dup
  dup=$(echo "$rules" | uniq -d)
  if [ -n "$dup" ]; then
    say "RPCs with more than one rule in gateway/keyward.yaml: $dup"
    return 1
  fi
}

# Writes the merged OpenAPI file for the current protos and config into directory $1.
# protoc-gen-swagger v1 writes one file per proto here, and the merge is ours: its own
# allow_merge drops the RPC comments of every file but the first.
generate_openapi() {
  local dir=$1
  stage_protos
  rm -rf "$dir"
  mkdir -p "$dir/parts"
  # shellcheck disable=SC2046
  protoc -I "$OUT/proto" -I "$OUT/proto/vendor" -I /usr/include \
    --swagger_out=logtostderr=true,grpc_api_configuration="$CONFIG":"$dir/parts" \
    $(proto_files)
  # Then what the plugin cannot take from the YAML: a title, the bearer header and the gateway's
  # error body on every operation; and stable formatting (sorted keys, two-space indent, final
  # newline) so diffs stay readable.
  python3 - "$dir"/parts/keyward/v1/*.swagger.json >"$dir/keyward.swagger.json" <<'PY'
import json, sys
doc = {"swagger": "2.0", "schemes": ["http", "https"], "consumes": ["application/json"],
       "produces": ["application/json"], "paths": {}, "definitions": {}}
for part_path in sys.argv[1:]:
    part = json.load(open(part_path))
    for section in ("paths", "definitions"):
        for name, value in part.get(section, {}).items():
            if section == "paths" and name in doc["paths"]:
                clash = set(value) & set(doc["paths"][name])
                if clash:
                    sys.exit(f"{name}: {sorted(clash)} bound twice")
                doc["paths"][name].update(value)
            elif doc[section].setdefault(name, value) != value:
                sys.exit(f"{section} {name} differs between files")

# What keyward enforces on requests, written into the schema so that clients, and fuzzers that
# generate requests from this file (schemathesis, scripts/schemathesis.sh), get past input
# validation. It is here rather than taken from the protos because Debian's protoc-gen-swagger
# (grpc-gateway 1.6.4) ignores google.api.field_behavior (support came in 1.14): the `required`
# lists below repeat the protos' REQUIRED annotations for body fields (path parameters are
# required by the path itself). Its own openapiv2_field option has no `format`, and importing it
# would make keyward's Rust build need a proto file that only a Debian Go package ships.
# The numbers are keyward's (src/app, src/domain) at its default configuration:
# password_max_length 128, password_min_length 8.
# `required`: the fields keyward refuses a call without (an empty string counts as missing).
ID = {"pattern": "^[0-9a-f]{32}$", "minLength": 32, "maxLength": 32}  # users, orgs, sessions
ID_OR_EMPTY = {"pattern": "^([0-9a-f]{32})?$", "maxLength": 32}
EMAIL = {"format": "email", "minLength": 3, "maxLength": 254}  # after trim, NFC, lowercase
PASSWORD = {"minLength": 1, "maxLength": 128}
NEW_PASSWORD = {"minLength": 8, "maxLength": 128}  # and a zxcvbn strength of 2
CODE = {"pattern": "^[0-9]{6}$", "minLength": 6, "maxLength": 6}
ACCESS_TOKEN = {"pattern": "^v4\\.public\\.[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)?$", "minLength": 1}
DISPLAY_NAME = {"maxLength": 100}  # characters, no control characters
ORG_NAME = {"minLength": 1, "maxLength": 200}
SLUG = {"pattern": "^([a-z0-9]+(-[a-z0-9]+)*)?$", "maxLength": 63}  # empty: derived from the name
WEBSITE = {"pattern": "^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][!-~]*)?)?$", "maxLength": 2048}
DEPARTMENT = {"maxLength": 100}
PAGE_SIZE = {"minimum": 0}  # 0: 50; above 200: 200
FIELDS = {
    "v1RegisterRequest": {"required": ["email", "password"], "email": EMAIL,
                          "password": NEW_PASSWORD, "display_name": DISPLAY_NAME},
    "v1OrganizationSignup": {"required": ["name"], "name": ORG_NAME, "slug": SLUG,
                             "website": WEBSITE},
    "v1LoginRequest": {"required": ["email", "password"], "email": EMAIL, "password": PASSWORD},
    "v1RefreshRequest": {"required": ["refresh_token"], "refresh_token": {
        "pattern": "^kwr_[A-Za-z0-9_-]+$", "minLength": 5, "maxLength": 128}},
    "v1AuthenticateRequest": {"required": ["access_token"], "access_token": ACCESS_TOKEN},
    "v1AuthorizeRequest": {"required": ["access_token"], "access_token": ACCESS_TOKEN,
                           "org_id": ID_OR_EMPTY},
    "v1BatchAuthorizeRequest": {"required": ["access_token"], "access_token": ACCESS_TOKEN,
                                "checks": {"maxItems": 100}},
    "v1PermissionCheck": {"org_id": ID_OR_EMPTY},
    "v1ChangePasswordRequest": {"required": ["current_password", "new_password"],
                                "current_password": PASSWORD, "new_password": NEW_PASSWORD},
    "v1SendCodeRequest": {"required": ["email", "purpose"], "email": EMAIL},
    "v1VerifyEmailRequest": {"required": ["email", "code"], "email": EMAIL, "code": CODE},
    "v1LoginWithCodeRequest": {"required": ["email", "code"], "email": EMAIL, "code": CODE},
    "v1ResetPasswordRequest": {"required": ["email", "code", "new_password"], "email": EMAIL,
                               "code": CODE, "new_password": NEW_PASSWORD},
    "v1CreateOrgRequest": {"required": ["name"], "name": ORG_NAME, "slug": SLUG,
                           "website": WEBSITE},
    "v1UpdateOrgRequest": {"name": ORG_NAME, "website": WEBSITE},
    "v1InviteMemberRequest": {"required": ["email"], "email": EMAIL, "department": DEPARTMENT},
    "v1AcceptInvitationRequest": {"required": ["token"], "token": {
        "pattern": "^kwi_[A-Za-z0-9_-]+$", "minLength": 5}},
    "v1CreateMemberRequest": {"required": ["email", "password"], "email": EMAIL,
                              "password": NEW_PASSWORD, "display_name": DISPLAY_NAME,
                              "department": DEPARTMENT},
    "v1UpdateMemberRequest": {"department": DEPARTMENT},
    "v1UpdateUserRequest": {"display_name": {"minLength": 1, **DISPLAY_NAME}, "email": EMAIL},
    "v1SetUserRoleRequest": {"required": ["role"]},
}
# Path and query parameters, by where and name, in every operation that has them.
PARAMETERS = {
    ("path", "user_id"): ID, ("path", "org_id"): ID, ("path", "session_id"): ID,
    ("query", "user_id"): ID_OR_EMPTY, ("query", "page_size"): PAGE_SIZE,
    ("query", "email_prefix"): {"maxLength": 254},
}
# The fields the protos mark `(google.api.field_behavior) = REQUIRED`, by message: a `required`
# list above may name only those (the plugin cannot read the annotation itself).
import glob, re
REQUIRED = {}
for proto in glob.glob("proto/keyward/v1/*.proto"):
    message = None
    for line in open(proto):
        m = re.match(r"message (\w+) \{", line)
        if m:
            message = m.group(1)
        m = re.match(r"\s*(?:optional |repeated )?[\w.]+ (\w+) = \d+ "
                     r"\[\(google\.api\.field_behavior\) = REQUIRED\];", line)
        if m and message:
            REQUIRED.setdefault(message, set()).add(m.group(1))
for name, rules in FIELDS.items():
    schema = doc["definitions"].get(name)
    if schema is None:
        sys.exit(f"constraints: no definition {name}")
    props = schema.get("properties", {})
    for field, keywords in rules.items():
        if field == "required":
            missing = [f for f in keywords if f not in props]
            if missing:
                sys.exit(f"constraints: {name} has no {missing}")
            unmarked = [f for f in keywords if f not in REQUIRED.get(name[len("v1"):], set())]
            if unmarked:
                sys.exit(f"constraints: {name}: {unmarked} not REQUIRED in the protos")
            schema["required"] = keywords
        elif field not in props:
            sys.exit(f"constraints: {name} has no {field}")
        else:
            props[field].update(keywords)
used = set()
for path in doc["paths"].values():
    for op in path.values():
        for param in op.get("parameters", []):
            key = (param["in"], param["name"])
            if key in PARAMETERS:
                param.update(PARAMETERS[key])
                used.add(key)
if set(PARAMETERS) - used:
    sys.exit(f"constraints: no parameters {sorted(set(PARAMETERS) - used)}")
# The gateway writes fields at their default value, and the default of a message field
# (timestamps included) is null: `"last_login_at": null` before the first login. Requests may
# send null there too, meaning unset.
for schema in doc["definitions"].values():
    for prop in schema.get("properties", {}).values():
        ref = prop.get("$ref", "").rpartition("/")[2]
        if doc["definitions"].get(ref, {}).get("type") == "object" or prop.get("format") == "date-time":
            prop["x-nullable"] = True

doc["info"] = {
    "title": "keyward REST API",
    "version": "v1",
    "description": (
        "keyward's gRPC API over JSON/HTTP through the grpc-gateway sidecar "
        "(routes: gateway/keyward.yaml). Calls for a signed-in user send "
        "`Authorization: Bearer <access_token>`. Every error answers a keywardError body whose "
        "`reason` is keyward's stable ErrorInfo reason; 429 answers carry Retry-After."
    ),
}
doc["securityDefinitions"] = {
    "bearer": {"type": "apiKey", "in": "header", "name": "Authorization",
               "description": "Bearer <access_token> from login, refresh or otp/login"},
}
doc["definitions"]["keywardError"] = {
    "type": "object",
    "description": "Every error the gateway answers.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "gRPC status code"},
        "status": {"type": "string", "description": "gRPC status name, e.g. UNAUTHENTICATED"},
        "reason": {"type": "string", "description": "keyward's stable reason, e.g. INVALID_CREDENTIALS"},
        "message": {"type": "string"},
        "field_violations": {"type": "array", "items": {
            "type": "object",
            "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
        }, "description": "invalid fields (google.rpc.BadRequest)"},
        "retry_after_seconds": {"type": "integer", "format": "int64",
                                "description": "when to retry (google.rpc.RetryInfo); also the Retry-After header"},
        "details": {"type": "array", "items": {"type": "object"},
                    "description": "the google.rpc detail messages, each with its @type"},
    },
}
for path in doc["paths"].values():
    for op in path.values():
        op["responses"]["default"] = {"description": "An error.",
                                      "schema": {"$ref": "#/definitions/keywardError"}}
print(json.dumps(doc, indent=2, sort_keys=True))
PY
}

inputs_digest() {
  {
    sha256sum "$0" gateway/main.go "$CONFIG" proto/keyward/v1/*.proto proto/vendor/google/api/*.proto
    go version
    dpkg-query -W "${PACKAGES[@]}"
  } | sha256sum | cut -d' ' -f1
}

cmd_build() {
  install_packages
  check_routes
  local digest stamp="$OUT/inputs.sha256"
  digest=$(inputs_digest)
  if [ -x "$OUT/keyward-gateway" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    say "target/gateway/keyward-gateway is up to date"
    return
  fi
  say "generating Go code and building target/gateway/keyward-gateway"
  stage_protos
  rm -rf "$GOPATH_DIR"
  mkdir -p "$GOPATH_DIR/src/keyward/gateway"
  # shellcheck disable=SC2046
  protoc -I "$OUT/proto" -I "$OUT/proto/vendor" -I /usr/include \
    --go_out=plugins=grpc,"$WKT_MAP":"$GOPATH_DIR/src" \
    --grpc-gateway_out=logtostderr=true,"$WKT_MAP",grpc_api_configuration="$CONFIG":"$GOPATH_DIR/src" \
    $(proto_files)
  cp gateway/main.go "$GOPATH_DIR/src/keyward/gateway/"
  (
    cd "$GOPATH_DIR/src/keyward/gateway"
    # Static (no cgo), so the binary runs on any base image, distroless included. GOCACHE
    # falls back to target/ for build users without a home directory.
    GO111MODULE=off GOPATH="$GOPATH_DIR:/usr/share/gocode" GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
      GOCACHE="${GOCACHE:-$OUT/go-cache}" go build -trimpath -ldflags="-s -w" -o "$OUT/keyward-gateway.new" .
  )
  mv "$OUT/keyward-gateway.new" "$OUT/keyward-gateway"
  echo "$digest" >"$stamp"
  say "built target/gateway/keyward-gateway"
}

cmd_openapi() {
  install_packages
  check_routes
  generate_openapi "$OUT/openapi"
  mkdir -p "$(dirname "$OPENAPI")"
  cp "$OUT/openapi/keyward.swagger.json" "$OPENAPI"
  say "wrote gateway/openapi/keyward.swagger.json"
}

cmd_check() {
  install_packages
  check_routes
  generate_openapi "$OUT/openapi-check"
  if ! diff -u "$OPENAPI" "$OUT/openapi-check/keyward.swagger.json" >"$OUT/openapi.diff" 2>&1; then
    head -n 60 "$OUT/openapi.diff" >&2
    say "gateway/openapi/keyward.swagger.json is out of date: run scripts/gateway.sh openapi and commit it"
    return 1
  fi
  local route undocumented=()
  while read -r route; do
    grep -qF "| \`$route\` |" gateway/README.md || undocumented+=("$route")
  done < <(awk '$1 ~ /^(get|post|put|patch|delete):$/ { sub(":", "", $1); print toupper($1), $2 }' "$CONFIG")
  if [ ${#undocumented[@]} -gt 0 ]; then
    say "routes missing from the table in gateway/README.md:"
    printf '  %s\n' "${undocumented[@]}" >&2
    return 1
  fi
  local unformatted
  unformatted=$(gofmt -l gateway/main.go)
  if [ -n "$unformatted" ]; then
    say "gateway/main.go is not gofmt-formatted (gofmt -w gateway/main.go)"
    return 1
  fi
  say "OpenAPI file and routes are up to date"
}

case "${1:-}" in
  build) cmd_build ;;
  openapi) cmd_openapi ;;
  check) cmd_check ;;
  *)
    echo "usage: scripts/gateway.sh build|openapi|check" >&2
    exit 2
    ;;
esac
