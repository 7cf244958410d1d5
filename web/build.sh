#!/usr/bin/env bash
# Builds what the page serves, into web/ (ignored by git): the runtime as a
# WebAssembly module with SIMD128 kernels and the C API's exports
# (kilobyte_runtime.wasm), and the models under web/models/: the self-test's
# two (kilobyte init, fixed seeds) and the demo's. The demo MEGABYTE is a
# short training run when KILOBYTE_DEMO_TRAIN=SECONDS is set (web/serve.sh
# sets 30), else randomly initialised like the BiGS demo.
# Usage: web/build.sh [KILOBYTE_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
kb=${1:-target/release/kilobyte}
[ -x "$kb" ] || cargo build -q --release -p kilobyte-trainer
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# Its own target dir: the stripped, panic=abort profile must not rebuild the host's.
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=true CARGO_PROFILE_RELEASE_PANIC=abort \
    cargo rustc -q -p kilobyte-runtime --release --target wasm32-unknown-unknown \
    --features capi-staticlib,simd128 --crate-type cdylib --target-dir target/wasm
cp target/wasm/wasm32-unknown-unknown/release/kilobyte_runtime.wasm web/
mkdir -p web/models
"$kb" init --preset micro --seed 7 --dtype q8 -o web/models/selftest-megabyte.kbm 2>/dev/null
"$kb" init --model bigs --preset micro --seed 7 --dtype q8 --labels neg,pos \
    -o web/models/selftest-bigs.kbm 2>/dev/null
[ -f web/models/demo-bigs.kbm ] || cp web/models/selftest-bigs.kbm web/models/demo-bigs.kbm
if [ ! -f web/models/demo-megabyte.kbm ]; then
    if [ -n "${KILOBYTE_DEMO_TRAIN:-}" ]; then
        run=$(mktemp -d)
        echo "web/build.sh: training the demo MEGABYTE for $KILOBYTE_DEMO_TRAIN s (once)"
        "$kb" demo --time "$KILOBYTE_DEMO_TRAIN" --run "$run/run" --sample 0 >/dev/null
        "$kb" export "$run/run" --dtype q8 -o web/models/demo-megabyte.kbm >/dev/null
        rm -rf "$run"
    else
        cp web/models/selftest-megabyte.kbm web/models/demo-megabyte.kbm
    fi
fi
