#!/usr/bin/env bash
# WebAssembly in CI, under Node.js:
# 1. the runtime's own tests (every SIMD128 kernel against the scalar
#    reference, and the model tests on top of them) built for wasm32-wasip1
#    with the simd128 feature, run by tests/wasm/wasi-run.mjs;
# 2. the page's module (web/build.sh) driven through web/kilobyte.js by
#    tests/wasm/parity.mjs: sampled and greedy generation, classification
#    and fill must print exactly what the CLI prints with the scalar kernels.
# Usage: tests/wasm/run.sh [KILOBYTE_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
kb=${1:-target/release/kilobyte}
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
# Debian's Node 18 needs the flag for WASI; Node 20 accepts and ignores it.
CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings --experimental-wasi-unstable-preview1 $PWD/tests/wasm/wasi-run.mjs" \
    cargo test -q -p kilobyte-runtime --target wasm32-wasip1 --features simd128 --lib

web/build.sh "$kb"
wasm=web/kilobyte_runtime.wasm m=web/models/selftest-megabyte.kbm b=web/models/selftest-bigs.kbm
export KILOBYTE_KERNELS=scalar
same() { # what, then the two outputs as hex
    [ "$2" = "$3" ] || { echo "wasm $1 differs from the CLI:"; echo " cli  $2"; echo " wasm $3"; exit 1; }
}
hex() { od -An -tx1 -v | tr -d ' \n'; }
for s in "0.8 40 0.95 3" "1.0 0 1.0 11" "0 0 1.0 0"; do
    read -r t k p seed <<<"$s"
    want=$("$kb" generate "$m" --prompt "Once upon a time" --bytes 48 --temperature "$t" \
        --top-k "$k" --top-p "$p" --seed "$seed" --context 96 | hex)
    got=$(node tests/wasm/parity.mjs "$wasm" generate "$m" "Once upon a time" 48 "$t" "$k" "$p" "$seed" 96 | hex)
    same "generation (temperature $t, top-k $k, top-p $p, seed $seed)" "$want" "$got"
done
texts=("a fine film" "dull and long" "x")
want=$(for t in "${texts[@]}"; do "$kb" classify "$b" "$t"; done)
got=$(node tests/wasm/parity.mjs "$wasm" classify "$b" "${texts[@]}")
same classification "$want" "$got"
want=$("$kb" fill "$b" "The qu__k brown fox" | hex)
got=$(node tests/wasm/parity.mjs "$wasm" fill "$b" "The qu__k brown fox" | hex)
same fill "$want" "$got"
echo "wasm: SIMD128 kernel tests pass; generation, classification and fill match the CLI"
