#!/usr/bin/env python3
"""Checks the trainer's layer order from its own `crate::` / `super::` paths.

Layers, top to bottom (a module may use its own layer and the ones below):

  cli      cli/, main.rs: the `kilobyte` command
  family   family.rs: picks the model family for start and resume
  job      megabyte/job.rs, bigs/jobs.rs: a family's run (model, data, eval)
  loop     train.rs, checkpoint/, optim/, data/, plot/, budget.rs
  model    megabyte/, bigs/, ngram.rs, params.rs: models over backend ops
  backend  backend/mod.rs, backend/{cpu,cuda}/mod.rs, backend/conformance.rs
  kernels  the rest of backend/: shapes, CPU kernels, CUDA kernel source
  (text.rs is a leaf every layer may use)

Prints every import that points up the layers, and every cycle between
units (a unit is one top-level module within one layer, e.g. `model:bigs`),
then exits 1 if there is any. Test code (tests.rs, *_tests.rs, testutil.rs,
inline `#[cfg(test)] mod` blocks) is skipped: tests drive a layer from above.

Usage: python3 trainer/layers.py [SRC]   (SRC: another checkout's trainer/src)
"""

import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")

LAYERS = [
    ("cli", ["cli/", "main.rs"]),
    ("family", ["family.rs"]),
    ("job", ["megabyte/job.rs", "bigs/jobs.rs"]),
    ("loop", ["train.rs", "checkpoint/", "optim/", "data/", "plot/", "budget.rs"]),
    ("model", ["megabyte/", "bigs/", "ngram.rs", "params.rs"]),
    (
        "backend",
        ["backend/mod.rs", "backend/cpu/mod.rs", "backend/cuda/mod.rs", "backend/conformance.rs"],
    ),
    ("kernels", ["backend/"]),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
LEAVES = {"text.rs", "lib.rs"}


def layer(rel):
    for name, prefixes in LAYERS:
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in prefixes):
            return name
    return None


def is_test(rel):
    base = os.path.basename(rel)
    return base == "tests.rs" or base.endswith("_tests.rs") or base == "testutil.rs"


def module_of(rel):
    """`backend/cpu/mod.rs` -> ["backend", "cpu"]."""
    parts = rel[:-3].split("/")
    if parts[-1] == "mod":
        parts.pop()
    return parts


def file_of(parts):
    """The file defining the longest prefix of the module path `parts`."""
    for n in range(len(parts), 0, -1):
        base = os.path.join(SRC, *parts[:n])
        for cand in (base + ".rs", os.path.join(base, "mod.rs")):
            if os.path.isfile(cand):
                return os.path.relpath(cand, SRC)
    return None


PATH = re.compile(r"(\$?crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super)((?:::[a-z_][a-z0-9_]*)*)::\{([^}]*)\}", re.S)


def imports(rel, text):
    """(line, target file) for every path into another module of the crate."""
    here = module_of(rel)
    # A file `x.rs` (not mod.rs) is module x: its `super` is its parent dir.
    parent = here[:-1]
    lines = text.split("\n")
    keep = []
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("#[cfg(test)]") and i + 1 < len(lines) and re.match(
            r"\s*(pub\s+)?mod\s+\w+\s*\{", lines[i + 1]
        ):
            break
        if s.startswith("//"):
            continue
        keep.append((i + 1, line.split("//")[0]))
    body = "\n".join(l for _, l in keep)
    found = []

    def resolve(root, segs):
        if root == "super":
            base = list(parent)
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
            segs = base + segs
        return file_of(segs)

    for n, line in keep:
        for m in PATH.finditer(line):
            root = "super" if m.group(1) == "super" else "crate"
            segs = m.group(2).split("::")[1:]
            target = resolve(root, segs)
            if target:
                found.append((n, target))
    for m in USE_GROUP.finditer(body):
        root = m.group(1)
        prefix = [s for s in m.group(2).split("::") if s]
        n = body[: m.start()].count("\n")
        n = keep[n][0] if n < len(keep) else 0
        for item in m.group(3).split(","):
            item = item.strip().split(" as ")[0].strip()
            if not item or item == "self" or not item[0].islower():
                continue
            target = resolve(root, prefix + item.split("::"))
            if target:
                found.append((n, target))
    return [(n, t) for n, t in found if t != rel]


def unit(rel):
    return f"{layer(rel)}:{module_of(rel)[0]}"


def shortest_cycle(start, comp, edges):
    """The units of a shortest cycle from `start` back to it, `start` first."""
    parent, queue = {start: None}, [start]
    while queue:
        nxt = []
        for a in queue:
            for b in sorted(edges.get(a, {})):
                if b == start:
                    path = [a]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return list(reversed(path))
                if b in comp and b not in parent:
                    parent[b] = a
                    nxt.append(b)
        queue = nxt
    raise AssertionError(f"{start} is on no cycle")


def main():
    files = []
    for d, _, names in os.walk(SRC):
        for f in names:
            if f.endswith(".rs"):
                files.append(os.path.relpath(os.path.join(d, f), SRC))
    files.sort()
    upward = []
    edges = {}
    for rel in files:
        if is_test(rel) or rel in LEAVES:
            continue
        src = layer(rel)
        assert src, f"{rel}: in no layer (add it to LAYERS in {__file__})"
        with open(os.path.join(SRC, rel)) as fh:
            text = fh.read()
        for n, target in sorted(set(imports(rel, text))):
            if target in LEAVES:
                continue
            dst = layer(target)
            if RANK[dst] < RANK[src]:
                upward.append(f"{rel}:{n}: {src} -> {dst} ({target})")
            a, b = unit(rel), unit(target)
            if a != b:
                edges.setdefault(a, {}).setdefault(b, f"{rel}:{n} -> {target}")
    # Cycles: strongly connected components of the unit graph (Tarjan).
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(set(edges) | {w for e in edges.values() for w in e}):
        if v not in index:
            visit(v)
    print(f"upward imports: {len(upward)}")
    for u in upward:
        print("  " + u)
    print(f"import cycles: {len(sccs)}")
    for comp in sccs:
        print("  between " + ", ".join(comp) + ":")
        # The shortest cycle through each unit, each printed once.
        seen = set()
        for start in comp:
            cycle = shortest_cycle(start, comp, edges)
            if frozenset(cycle) in seen:
                continue
            seen.add(frozenset(cycle))
            hops = cycle + [start]
            print("    cycle: " + " -> ".join(hops))
            for x, y in zip(hops, hops[1:]):
                print(f"      {x} -> {y}: {edges[x][y]}")
    return 1 if upward or sccs else 0


if __name__ == "__main__":
    sys.exit(main())
