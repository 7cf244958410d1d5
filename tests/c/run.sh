#!/usr/bin/env bash
# Builds the runtime's C staticlib, compiles tests/c/capi_test.c against it
# with gcc, and checks that the C program prints what the `kilobyte` CLI
# prints for the same models and inputs (greedy generation, classification
# with label names and probabilities, gap filling). Models are made by
# `kilobyte init` with fixed seeds. Usage: tests/c/run.sh [KILOBYTE_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
kb=${1:-target/release/kilobyte}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
CARGO_PROFILE_RELEASE_PANIC=abort cargo rustc -q -p kilobyte-runtime --release \
    --features capi-staticlib --crate-type staticlib --target-dir target/capi
gcc -std=c11 -O2 -Wall -Wextra -Werror -Iruntime/include tests/c/capi_test.c \
    target/capi/release/libkilobyte_runtime.a -lm -o "$out/capi_test"

"$kb" init --preset micro --seed 7 --dtype q8 -o "$out/m.kbm" 2>/dev/null
"$kb" init --model bigs --preset micro --seed 7 --dtype q8 --labels neg,pos -o "$out/b.kbm" 2>/dev/null

want=$("$kb" generate "$out/m.kbm" --prompt "Once upon a time" --bytes 40 --temperature 0 --context 64 2>/dev/null | od -c)
got=$("$out/capi_test" "$out/m.kbm" generate "Once upon a time" 40 | od -c)
[ "$want" = "$got" ] || { echo "C API generation differs from kilobyte generate"; echo "$want"; echo "$got"; exit 1; }

texts=("a fine film" "dull and long" "x")
want=$(for t in "${texts[@]}"; do "$kb" classify "$out/b.kbm" "$t"; done)
got=$("$out/capi_test" "$out/b.kbm" classify "${texts[@]}")
[ "$want" = "$got" ] || { echo "C API classification differs"; echo "$want"; echo "$got"; exit 1; }

want=$("$kb" fill "$out/b.kbm" "The qu__k brown fox" | od -c)
got=$("$out/capi_test" "$out/b.kbm" fill "The qu__k brown fox" | od -c)
[ "$want" = "$got" ] || { echo "C API fill differs"; exit 1; }
echo "C API: generation, classification and fill match the CLI"
