#!/usr/bin/env bash
# Remakes the two small models the runtime's examples embed (committed, so
# `cargo run --example` works on a clean clone without network):
# - tiny-megabyte.kbm: a MEGABYTE of about 150k parameters trained for
#   TIME seconds on this repository's prose and Rust source;
# - code-or-prose.kbm: a BiGS classifier (labels code, prose) trained on
#   lines of the repository's Rust source against lines of its Markdown.
# Usage: runtime/examples/models/make.sh [KILOBYTE_BINARY] [TIME]
set -euo pipefail
cd "$(dirname "$0")/../../.."
kb=${1:-target/release/kilobyte}
time=${2:-90}
out=runtime/examples/models
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$kb" train --data README.md format/SPEC.md runtime/src format/src --run "$work/mb" \
    --d-global 16 --layers-global 2 --heads-global 2 --d-local 32 --layers-local 2 \
    --heads-local 2 --max-seq 256 --batch 8 --steps 100000 --time-limit "$time" --quiet
"$kb" export "$work/mb" --dtype q8 -o "$out/tiny-megabyte.kbm"

# One line per row: source lines that are code (no comments), Markdown lines
# that are prose (no tables, code or headings); shuffled with a fixed seed.
python3 - "$work" <<'PY'
import pathlib, random, sys
work = pathlib.Path(sys.argv[1])
code = [l.strip() for p in sorted(pathlib.Path(".").glob("*/src/**/*.rs"))
        for l in p.read_text().splitlines()
        if 20 <= len(l.strip()) <= 100 and not l.strip().startswith("//")]
prose = [l.strip() for p in sorted(pathlib.Path(".").glob("**/*.md")) if "target" not in p.parts
         for l in p.read_text().splitlines()
         if 20 <= len(l.strip()) <= 100 and l.strip()[0].isalpha() and "|" not in l]
rng = random.Random(7)
n = min(len(code), len(prose), 3000)
rows = [(t.replace("\t", " "), "code") for t in rng.sample(code, n)] + \
       [(t.replace("\t", " "), "prose") for t in rng.sample(prose, n)]
rng.shuffle(rows)
cut = len(rows) * 9 // 10
for name, part in (("train.tsv", rows[:cut]), ("dev.tsv", rows[cut:])):
    with open(work / name, "w") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{t}\t{l}\n" for t, l in part)
PY
"$kb" train --model bigs --objective classify --train "$work/train.tsv" --dev "$work/dev.tsv" \
    --run "$work/bigs" --d-model 64 --d-expand 128 --layers 2 --max-seq 128 \
    --steps 100000 --time-limit "$time" --quiet
"$kb" export "$work/bigs" --dtype q8 -o "$out/code-or-prose.kbm"
ls -l "$out"/*.kbm
