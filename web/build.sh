#!/usr/bin/env bash
# Builds what the page serves, into web/ (ignored by git): the runtime as a
# WebAssembly module with SIMD128 kernels and the C API's exports
# (kilobyte_runtime.wasm), and the models under web/models/: the self-test's
# two (kilobyte init, fixed seeds) and the demos: the small MEGABYTE and
# code-or-prose BiGS classifier of runtime/examples/models/.
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
# The demos are the Rust examples' small trained models (committed).
cp runtime/examples/models/tiny-megabyte.kbm web/models/demo-megabyte.kbm
cp runtime/examples/models/code-or-prose.kbm web/models/demo-bigs.kbm
