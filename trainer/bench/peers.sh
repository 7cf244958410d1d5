#!/usr/bin/env bash
# kilobyte's runtime side by side with llama2.c and llama.cpp, in one run on
# one machine: generation bytes/s, G multiply-adds/s and effective weight
# GB/s on 1 and 2 threads, at matched parameter counts with a 256-entry
# (byte) vocabulary, and sentence encoding (BiGS classification against
# llama.cpp's prompt processing of as many tokens).
#
#   trainer/bench/peers.sh LLAMA2C_DIR LLAMACPP_DIR [OUT_DIR]
#
# LLAMA2C_DIR and LLAMACPP_DIR are source checkouts of
# github.com/karpathy/llama2.c and github.com/ggml-org/llama.cpp (public,
# never committed here; the README names the commits measured). The script
# builds llama2.c's run.c and runq.c with gcc -Ofast -march=native -fopenmp,
# llama.cpp's llama-bench and llama-quantize with cmake (GGML_NATIVE), and
# kilobyte's release CLI; writes random-weight Llama models of kilobyte's
# parameter counts (trainer/bench/peer_models.py: llama2.c's files and an
# f32 GGUF through the `gguf` package, from LLAMACPP_DIR/gguf-py when it is
# there); quantises the GGUF to Q8_0 and Q4_0 with llama-quantize --pure;
# and prints one table. Needs gcc, cmake, python3 with numpy.
#
# Environment: PEERS_BYTES (bytes generated per run, default 1000),
# PEERS_PRESETS (MEGABYTE presets, default micro,ref4m,small),
# PEERS_THREADS (default "1 2"), PEERS_LLAMACPP_BUILD (llama.cpp's cmake
# build directory, default LLAMACPP_DIR/build as its README has it: a
# second run rebuilds nothing).
#
# How the columns are counted, the same for every engine:
# - MAC/byte: kilobyte's own count (`bench runtime`); for a Llama, its
#   matrices and tied classifier once per token plus attention over the
#   average context (half the bytes generated).
# - GB/s: weight bytes read per byte generated times bytes/s (kilobyte:
#   `bench runtime`'s wbytes/B; a Llama: every matrix once per token at its
#   storage size: f32 4 B, llama2.c Q8 1+4/64 B, Q8_0 34/32 B, Q4_0 18/32 B).
# - kilobyte's 2-thread rows split one input's large products over a pool
#   (`bench runtime --threads`); products under the runtime's threshold
#   stay on one thread, so micro and ref4m barely change.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,8p' "$0" >&2; exit 2; }
l2c=$(realpath "$1")
lcpp=$(realpath "$2")
out=$(realpath -m "${3:-$(mktemp -d)}")
mkdir -p "$out"
repo=$(cd "$(dirname "$0")/../.." && pwd)
bytes=${PEERS_BYTES:-1000}
presets=${PEERS_PRESETS:-micro,ref4m,small}
threads=${PEERS_THREADS:-1 2}
lbuild=$(realpath -m "${PEERS_LLAMACPP_BUILD:-$lcpp/build}")
[ -f "$l2c/run.c" ] && [ -f "$l2c/runq.c" ] || { echo "peers.sh: $l2c has no run.c/runq.c (a llama2.c checkout?)" >&2; exit 2; }
[ -f "$lcpp/tools/llama-bench/llama-bench.cpp" ] || { echo "peers.sh: $lcpp has no tools/llama-bench (a llama.cpp checkout?)" >&2; exit 2; }

echo "== building (kilobyte, llama2.c, llama.cpp) into $out" >&2
(cd "$repo" && cargo build -q --release -p kilobyte-trainer)
kb="$repo/target/release/kilobyte"
gcc -Ofast -march=native -fopenmp "$l2c/run.c" -o "$out/run" -lm
gcc -Ofast -march=native -fopenmp "$l2c/runq.c" -o "$out/runq" -lm
cmake -S "$lcpp" -B "$lbuild" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >"$out/cmake.log"
cmake --build "$lbuild" --target llama-bench llama-quantize -j "$(nproc)" >"$out/build.log"
lbench="$lbuild/bin/llama-bench"
lquant="$lbuild/bin/llama-quantize"
export PYTHONPATH="$lcpp/gguf-py${PYTHONPATH:+:$PYTHONPATH}"

echo "== kilobyte bench runtime" >&2
"$kb" bench runtime --presets "$presets" --dtypes f32,q8,q4 --bytes "$bytes" --threads "${threads// /,}" |
    tee "$out/kilobyte.txt" >&2
"$kb" bench runtime --model bigs --presets micro,small --dtypes f32,q8 --bytes 128 | tee "$out/bigs.txt" >&2

# One row per engine run: engine size params dtype threads gen_per_s MAC_per_byte weight_bytes_per_byte
rows="$out/rows.tsv"
: >"$rows"
awk -v OFS='\t' '$1 ~ /^(micro|small|base|ref4m)$/ && NF >= 13 {
    print "kilobyte MEGABYTE", $1, $4, $2, $3, $7, $9, $10 }' "$out/kilobyte.txt" >>"$rows"

llama_row() { # engine size dtype threads per_s shape.json bytes_per_param
    python3 - "$@" <<'EOF' >>"$rows"
import json, sys
engine, size, dtype, threads, per_s, shape, bpp = sys.argv[1:8]
s = json.load(open(shape))
d, h, L = s["dim"], s["hidden"], s["layers"]
matrices = L * (4 * d * d + 3 * d * h) + 256 * d
macs = matrices + L * 2 * d * int(sys.argv[8]) / 2
print(engine, size, s["params"], dtype, threads, per_s, round(macs), round(matrices * float(bpp)), sep="\t")
EOF
}

# A random-weight Llama of PARAMS parameters in DIR, in every peer's format.
peer_model() { # params dir
    python3 "$repo/trainer/bench/peer_models.py" write "$1" "$2"
    for q in Q8_0 Q4_0; do
        "$lquant" --pure "$2/model-f32.gguf" "$2/model-$q.gguf" "$q" >"$2/quantize-$q.log" 2>&1
    done
}
# llama-bench's tokens/s for test TEST (gen or prompt) of one json file.
ts() { python3 -c "import json, sys; print([r['avg_ts'] for r in json.load(open(sys.argv[1])) if r['n_' + sys.argv[2]] > 0][0])" "$1" "$2"; }

for size in ${presets//,/ }; do
    params=$(awk -v s="$size" '$1 == s && $2 == "f32" { print $4; exit }' "$out/kilobyte.txt")
    [ -n "$params" ] || { echo "peers.sh: no f32 row for $size in kilobyte's table" >&2; exit 1; }
    m="$out/models/megabyte-$size"
    peer_model "$params" "$m"
    echo "== $size: kilobyte MEGABYTE $params parameters, Llama $(cat "$m/shape.json")" >&2
    for t in $threads; do
        for prog in run runq; do
            f=$([ $prog = run ] && echo model.bin || echo modelq.bin)
            best=0
            for _ in 1 2 3; do
                r=$(OMP_NUM_THREADS=$t "$out/$prog" "$m/$f" -z "$m/tok.bin" -t 0 -n "$bytes" 2>&1 >/dev/null |
                    awk '/achieved tok\/s/ { print $3 }')
                best=$(python3 -c "print(max($best, ${r:-0}))")
            done
            if [ $prog = run ]; then
                llama_row llama2.c "$size" f32 "$t" "$best" "$m/shape.json" 4 "$bytes"
            else
                llama_row llama2.c "$size" q8 "$t" "$best" "$m/shape.json" 1.0625 "$bytes"
            fi
        done
        for q in f32 Q8_0 Q4_0; do
            j="$m/bench-$q-$t.json"
            "$lbench" -m "$m/model-$q.gguf" -p 0 -n "$bytes" -t "$t" -r 3 -o json >"$j" 2>"$j.log"
            bpp=$(case $q in f32) echo 4 ;; Q8_0) echo 1.0625 ;; Q4_0) echo 0.5625 ;; esac)
            llama_row llama.cpp "$size" "$q" "$t" "$(ts "$j" gen)" "$m/shape.json" "$bpp" "$bytes"
        done
    done
done

# Encoding: a Llama of each BiGS preset's size processing a 128-token prompt.
: >"$out/prompt.tsv"
for size in micro small; do
    params=$(awk -v s="$size" '$1 == s && $2 == "f32" { print $3; exit }' "$out/bigs.txt")
    m="$out/models/bigs-$size"
    peer_model "$params" "$m"
    for t in $threads; do
        for q in f32 Q8_0; do
            j="$m/bench-$q-$t.json"
            # llama.cpp 0c1e570 crashes in its repacked Q8_0 prompt path on
            # some AVX-512 CPUs; such a row is measured without repacking
            # and marked.
            how=""
            if ! "$lbench" -m "$m/model-$q.gguf" -p 128 -n 0 -t "$t" -r 3 -o json >"$j" 2>"$j.log"; then
                "$lbench" -m "$m/model-$q.gguf" -p 128 -n 0 -t "$t" -r 3 -o json --repack 0 >"$j" 2>"$j.log"
                how=" (--repack 0: crashed with repacking)"
            fi
            echo -e "$size\t$params\t$q$how\t$t\t$(ts "$j" prompt)" >>"$out/prompt.tsv"
        done
    done
done

echo
echo "Generation, $bytes bytes (tokens) each, best of 3; $(date -u +%F), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
python3 - "$rows" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order = {"micro": 0, "ref4m": 1, "small": 2, "base": 3}
rows.sort(key=lambda r: (order.get(r[1], 9), int(r[4]), r[0], r[3]))
print(f"{'engine':<18} {'size':<6} {'params':>10} {'dtype':<5} {'thr':>3} {'bytes/s':>9} {'GMAC/s':>7} {'GB/s':>6}")
for e, size, params, dtype, t, per_s, mac, wb in rows:
    per_s = float(per_s)
    print(f"{e:<18} {size:<6} {int(params):>10,} {dtype:<5} {t:>3} {per_s:>9,.0f} "
          f"{per_s * float(mac) / 1e9:>7.2f} {per_s * float(wb) / 1e9:>6.1f}")
EOF
echo
echo "Encoding 128 bytes (sentences/s): kilobyte BiGS classification on one thread; llama.cpp prompt processing (pp128) of a Llama of the same size"
awk '$1 ~ /^(micro|small|base)$/ && NF >= 12 {
    printf "%-18s %-6s %10s %-5s %3d %9.1f %7.2f\n", "kilobyte BiGS", $1, $3, $2, 1, $7, $10 }' "$out/bigs.txt"
awk -F'\t' '{ printf "%-18s %-6s %10s %-5s %3d %9.1f\n", "llama.cpp pp128", $1, $2, $3, $4, $5 / 128 }' "$out/prompt.tsv"
