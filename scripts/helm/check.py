"""Checks keyward's Helm chart; run by scripts/check-helm.sh, which installs what it imports.

For values.yaml, every helm/keyward/ci/*.yaml and any file given on the command line:
  1. the values (the chart's defaults with the file on top, as Helm merges them) must satisfy
     values.schema.json, checked with the jsonschema package (draft-07);
  2. `helm lint --strict` for Kubernetes 1.30, and
  3. `helm template`, whose output must parse as YAML into Kubernetes objects,
both through Helm's own Go SDK (the helm-python-sdk wheel bundles it as a library; no helm
binary is involved). Every KEYWARD_* variable the chart can set must name a key of
src/config.rs.
  4. every rendered object is validated against the Kubernetes API's own schemas (the
     kubernetes-validate package, strict: unknown fields are errors) for the oldest release the
     chart supports and the newest the package knows; objects of CRDs (ServiceMonitor,
     GRPCRoute) have no schema there and are named as unchecked.
Exits 1 on the first file with a problem reported, after checking them all.
"""

import glob
import json
import os
import re
import sys

import jsonschema
import kubernetes_validate
import yaml
from helm_python.chart import Chart, lint
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "keyward")
KUBE_VERSION = "v1.30.0"
# API schemas every rendered object must satisfy: the chart's oldest Kubernetes (Chart.yaml's
# kubeVersion) and the newest release kubernetes-validate ships.
API_VERSIONS = ("1.30.0", "1.37.0")
# Settings the chart sets outside `config` (grpc_addr and metrics_addr from ports, the secrets by
# reference, the signing key as a file mounted from its Secret).
CHART_SET_KEYS = {"grpc_addr", "metrics_addr", "signing_key_file", "mongodb_uri", "smtp_url",
                  "code_secret"}
# Settings the chart never sets: dev mode does not run in a cluster; the signing key is never an
# environment value (keyward refuses it beside signing_key_file).
NEVER_SET = {"dev", "data_dir", "signing_key"}


def config_keys():
    """The setting names in src/config.rs's SETTINGS table (the first string of each row)."""
    text = open(os.path.join(ROOT, "src", "config.rs"), encoding="utf-8").read()
    block = re.search(r"pub const SETTINGS: &\[.*?\] = &\[(.*?)\n\];", text, re.S)
    if not block:
        sys.exit("check-helm: cannot find the SETTINGS table in src/config.rs")
    return set(re.findall(r'^\s*\(\s*"([a-z0-9_]+)"', block.group(1), re.M))


def coalesce(base, override):
    """Helm's merge of a values file over the chart's values: maps merge, null deletes."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = coalesce(merged[key], value)
        else:
            merged[key] = value
    return merged


def shown(path):
    """A path relative to the repo when it is inside it."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def check_file(path, defaults, validator, keys):
    """Returns the problems found with one values file."""
    problems = []
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        return [f"{path}: not a YAML mapping"]
    merged = coalesce(defaults, values)
    for error in sorted(validator.iter_errors(merged), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in error.path) or "(top level)"
        problems.append(f"schema: {where}: {error.message}")

    report = lint(CHART, values, strict=True, kube_version=KUBE_VERSION)
    for message in report.get("messages", []):
        # Severity 1 is INFO ("icon is recommended"); --strict fails on warnings and errors.
        if message.get("severity", 0) >= 2:
            problems.append(f"helm lint: {message.get('path')}: {message.get('error', '').strip()}")
    for error in report.get("errors") or []:
        line = f"helm lint: {str(error).strip()}"
        if line not in problems and not any(str(error).strip() in p for p in problems):
            problems.append(line)
    if problems:
        return problems

    try:
        manifests = Chart.load(CHART).render(
            values, name="keyward", namespace="keyward", is_install=True
        )
    except Exception as e:  # the SDK's HelmRenderError / HelmValuesError
        return [f"helm template: {e}"]
    kinds = []
    unchecked = set()
    for name, text in sorted(manifests.items()):
        if name.endswith("NOTES.txt"):
            continue
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            problems.append(f"helm template: {name} is not valid YAML: {e}")
            continue
        for doc in docs:
            if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
                problems.append(f"helm template: {name} renders something that is not a Kubernetes object")
                continue
            kinds.append(doc["kind"])
            problems += unknown_settings(doc, keys, name)
            problems += api_problems(doc, name, unchecked)
    if "Deployment" not in kinds:
        problems.append("helm template: no Deployment rendered")
    if not problems:
        note = f" (no API schema, not validated: {', '.join(sorted(unchecked))})" if unchecked else ""
        print(f"check-helm: ok  {shown(path)}: {', '.join(sorted(kinds))}{note}")
    return problems


def api_problems(doc, name, unchecked):
    """Where a rendered object breaks the Kubernetes API schemas of API_VERSIONS (strict)."""
    problems = []
    for version in API_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except SchemaNotFoundError:
            unchecked.add(f"{doc['kind']} {doc['apiVersion']}")
            return []
        except ValidationError as e:
            # The package's error carries the jsonschema error's fields.
            where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
            problems.append(f"kubernetes {version} API: {name}: {doc['kind']} {where}: {e.message}")
    return problems


def pod_spec(doc):
    """The pod spec of a rendered workload (Deployment, Job, Pod), or None."""
    if doc["kind"] == "Pod":
        return doc.get("spec") or {}
    if doc["kind"] in ("Deployment", "Job"):
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return None


def unknown_settings(doc, keys, name):
    """KEYWARD_* names in a rendered object that keyward would reject at start-up, or that the
    chart must never set."""
    names = []
    if doc["kind"] == "ConfigMap":
        names = list((doc.get("data") or {}).keys())
    spec = pod_spec(doc)
    if spec is not None:
        for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            names += [e["name"] for e in container.get("env") or []]
    settings = {n: n[len("KEYWARD_"):].lower() for n in names if n.startswith("KEYWARD_")}
    bad = [f"helm template: {name} sets {n}, which is not a setting in src/config.rs"
           for n, key in settings.items() if key not in keys]
    bad += [f"helm template: {name} sets {n}, which the chart never sets"
            for n, key in settings.items() if key in NEVER_SET]
    return bad


def main():
    keys = config_keys()
    with open(os.path.join(CHART, "values.schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)

    failed = False
    exposed = set(schema["properties"]["config"]["properties"])
    for key in sorted((exposed | CHART_SET_KEYS) - keys):
        print(f"check-helm: the chart sets `{key}`, which is not a setting in src/config.rs")
        failed = True
    # New settings in src/config.rs are reported, not failed: config.rs changes in other hands.
    for key in sorted(keys - exposed - CHART_SET_KEYS - NEVER_SET):
        print(f"check-helm: note: setting `{key}` is not in the chart's config schema yet")

    with open(os.path.join(CHART, "values.yaml"), encoding="utf-8") as f:
        defaults = yaml.safe_load(f)
    files = [os.path.join(CHART, "values.yaml")]
    files += sorted(glob.glob(os.path.join(CHART, "ci", "*.yaml")))
    files += [os.path.abspath(p) for p in sys.argv[1:]]
    for path in files:
        problems = check_file(path, defaults, validator, keys)
        for problem in problems:
            print(f"check-helm: FAIL {shown(path)}: {problem}")
        failed |= bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
