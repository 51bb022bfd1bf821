#!/usr/bin/env python3
"""Prints the chart's values table (Markdown) from values.yaml: every key
documented with a `# -- description` comment (the helm-docs convention),
its type and its default. The README carries this table between
<!-- values-table --> markers; scripts/chart-check.sh fails when it is stale.

    values-table.py charts/gmon-agent/values.yaml          # print the table
    values-table.py charts/gmon-agent/values.yaml README.md --write|--check
"""
import json
import re
import sys

import yaml

BEGIN, END = "<!-- values-table -->", "<!-- /values-table -->"


def documented(path):
    """(dotted key, description) for each `# --` comment, in file order."""
    stack = []  # (indent, key)
    pending = None
    out = []
    for line in open(path):
        s = line.strip()
        if s.startswith("# --"):
            pending = s[4:].strip()
            continue
        if s.startswith("#") and pending is not None:
            pending += " " + s[1:].strip()  # continuation
            continue
        m = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if pending is not None:
            out.append((".".join(k for _, k in stack), pending))
            pending = None
    return out


def lookup(values, dotted):
    v = values
    for k in dotted.split("."):
        v = v[k]
    return v


def kind(v):
    return {bool: "bool", int: "int", str: "string", list: "list", dict: "object"}.get(type(v), "any")


def leaves(v, prefix=""):
    if isinstance(v, dict) and v:
        for k, x in v.items():
            yield from leaves(x, f"{prefix}{k}.")
    else:
        yield prefix[:-1]


def table(values_path):
    values = yaml.safe_load(open(values_path))
    docs = [k for k, _ in documented(values_path)]
    bare = [leaf for leaf in leaves(values)
            if not any(leaf == d or leaf.startswith(d + ".") for d in docs)]
    if bare:
        sys.exit(f"{values_path}: undocumented values (add a '# --' comment): {', '.join(bare)}")
    rows = ["| value | type | default | description |", "|---|---|---|---|"]
    for key, desc in documented(values_path):
        v = lookup(values, key)
        default = json.dumps(v, separators=(", ", ": "))
        desc = desc.replace("|", "\\|")
        rows.append(f"| `{key}` | {kind(v)} | `{default}` | {desc} |")
    return "\n".join(rows) + "\n"


def main():
    t = table(sys.argv[1])
    if len(sys.argv) == 2:
        sys.stdout.write(t)
        return
    readme, mode = sys.argv[2], sys.argv[3]
    text = open(readme).read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme}: no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{t}{END}{tail}"
    if mode == "--write":
        open(readme, "w").write(new)
    elif new != text:
        sys.exit(f"{readme}: the values table is stale; run scripts/chart-check.sh --update")


if __name__ == "__main__":
    main()
