#!/usr/bin/env python3
"""Structural metrics of the Rust sources, for before/after comparisons of a redesign.

usage: code-metrics.py [ROOT]   (default: the repository)  — prints JSON:
  longest functions (lines), deepest nesting (brace depth inside a function body), and the
  number of `GraphIndex::new` call sites, over src/ and codec/src/ (tests excluded).
A function is `fn NAME` up to its matching brace; strings and comments are skipped roughly
(enough for this codebase's style)."""
import json, os, re, sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")

def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"'(?:\\.|[^'\\])'", "' '", text)
    return text

funcs, index_sites = [], 0
for base in ("src", "codec/src"):
    for dirpath, _, files in os.walk(os.path.join(root, base)):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            raw = open(path, encoding="utf-8").read()
            index_sites += raw.count("GraphIndex::new(")
            text = strip(raw)
            # cut unit-test modules
            cut = text.find("#[cfg(test)]")
            if cut >= 0:
                text = text[:cut]
            for m in re.finditer(r"\bfn\s+(\w+)[^;{]*\{", text, re.S):
                start = m.end() - 1
                depth, maxd, i = 0, 0, start
                while i < len(text):
                    c = text[i]
                    if c == "{":
                        depth += 1
                        maxd = max(maxd, depth)
                    elif c == "}":
                        depth -= 1
                        if depth == 0:
                            break
                    i += 1
                line0 = text.count("\n", 0, m.start()) + 1
                lines = text.count("\n", m.start(), i) + 1
                rel = os.path.relpath(path, root)
                funcs.append({"fn": f"{rel}:{m.group(1)}", "line": line0, "lines": lines, "nesting": maxd - 1})

longest = sorted(funcs, key=lambda x: -x["lines"])[:10]
deepest = sorted(funcs, key=lambda x: -x["nesting"])[:10]
print(json.dumps({
    "functions": len(funcs),
    "over_100_lines": sum(1 for f in funcs if f["lines"] > 100),
    "longest": [(f["fn"], f["lines"]) for f in longest],
    "deepest": [(f["fn"], f["nesting"]) for f in deepest],
    "graph_index_new_call_sites": index_sites,
}, indent=1))
