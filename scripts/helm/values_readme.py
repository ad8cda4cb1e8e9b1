"""Writes the values table of helm/keyward/README.md from values.yaml's `# --` comments.

    python3 scripts/helm/values_readme.py           # rewrite the table in README.md
    python3 scripts/helm/values_readme.py --check   # exit 1 if README.md is out of date

The comment convention is helm-docs': `# -- description` directly above a key, continued on the
`#` lines after it; `# @default -- text` shows text instead of the value. A key with a
description is one row (a map or list as its JSON default); a map without one is described by
its keys; a value with neither a description nor described keys is an error, so every value
keeps a description. Types come from values.schema.json where it says, else from the default.
The table replaces what lies between the README's `<!-- values:start -->` and
`<!-- values:end -->` lines; everything else in README.md is written by hand. Needs PyYAML.
"""

import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "keyward")
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)")


def descriptions(text):
    """{dotted.path: (description, default override or None)} from the `# --` comments."""
    found = {}
    stack = []  # (indent, key) of the maps enclosing the current line
    block = []  # the comment lines directly above the current line
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        match = KEY.match(line)
        if not match or stripped.startswith("-"):
            block = []
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        starts = [i for i, c in enumerate(block) if c.startswith("# --")]
        if starts:
            lines = block[starts[-1]:]
            text_lines, default = [], None
            for comment in lines:
                body = comment[1:].strip()
                if body.startswith("@default --"):
                    default = body[len("@default --"):].strip()
                elif body.startswith("--"):
                    text_lines.append(body[2:].strip())
                else:
                    text_lines.append(body)
            found[path] = (" ".join(t for t in text_lines if t), default)
        block = []
    return found


def schema_type(schema, path):
    """The JSON-schema type of a dotted path, or None where the schema does not say."""
    node = schema
    for part in path.split("."):
        node = (node.get("properties") or {}).get(part)
        if node is None:
            return None
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    kind = node.get("type")
    if isinstance(kind, list):
        return "/".join(k for k in kind if k != "null")
    return kind


def value_type(value):
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string"


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def rows(values, docs, schema):
    """Table rows in values.yaml's order, and the paths left undescribed."""
    out, missing = [], []

    def walk(node, prefix):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in docs:
                description, default = docs[path]
                shown = f"{default}" if default else f"`{json.dumps(value)}`"
                kind = schema_type(schema, path) or value_type(value)
                out.append(f"| `{path}` | {kind} | {cell(shown)} | {cell(description)} |")
                continue
            described_below = any(p.startswith(path + ".") for p in docs)
            if isinstance(value, dict) and value and described_below:
                walk(value, path + ".")
            else:
                missing.append(path)

    walk(values, "")
    return out, missing


def table():
    with open(os.path.join(CHART, "values.yaml"), encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(CHART, "values.schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    docs = descriptions(text)
    body, missing = rows(yaml.safe_load(text), docs, schema)
    if missing:
        sys.exit("values_readme: no `# --` description for: " + ", ".join(missing))
    head = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    return "\n".join(head + body) + "\n"


def main():
    check = sys.argv[1:] == ["--check"]
    path = os.path.join(CHART, "README.md")
    with open(path, encoding="utf-8") as f:
        readme = f.read()
    if START not in readme or END not in readme:
        sys.exit(f"values_readme: {os.path.relpath(path, ROOT)} has no {START} ... {END} section")
    before, rest = readme.split(START, 1)
    after = rest.split(END, 1)[1]
    wanted = f"{before}{START}\n{table()}{END}{after}"
    if wanted == readme:
        return
    if check:
        sys.exit("values_readme: helm/keyward/README.md is out of date with values.yaml; "
                 "run PYTHONPATH=target/tools/helm-check python3 scripts/helm/values_readme.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(wanted)
    print(f"values_readme: wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
