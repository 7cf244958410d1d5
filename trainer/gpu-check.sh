#!/usr/bin/env bash
# GPU checks of the CUDA backend, in two halves (the GPU machine has no Rust
# toolchain):
#
#   trainer/gpu-check.sh build        here: builds the release `kilobyte`
#                                     and the trainer's test executable into
#                                     device-carry/ (git-ignored), with the
#                                     tinyshakespeare data they need
#   trainer/gpu-check.sh run [OUT]    on the GPU machine (repository root):
#                                     runs every check, writes
#                                     OUT/gpu-report.txt (default: .)
#
# With the device tool: run(command="trainer/gpu-check.sh run $OUT",
# carry=["device-carry"]), then commit the report as
# trainer/gpu-report.txt and quote it in the README.
#
# What `run` checks (each section of the report names its tolerance):
#  1. nvidia-smi header, driver and library versions;
#  2. every op forward and backward against the f64 CPU reference (fp32
#     within 1e-4 relative, bf16 within 2e-2), whole-model loss and
#     gradients of MEGABYTE and BiGS against the CPU (1e-4), the NVRTC
#     compile of kernels.cu: the unit tests with KILOBYTE_REQUIRE_GPU=1;
#  3. 50 MEGABYTE training steps on the CPU and on the GPU (fp32 and bf16):
#     the loss curves side by side (fp32: within 1e-3 relative per step;
#     bf16: 3e-2);
#  4. kill-and-resume on the GPU: a run interrupted with SIGKILL after its
#     step-20 checkpoint and resumed ends with the same weights (sha256) as
#     one run straight through; the same run resumed on the CPU continues;
#  5. speed: tinyshakespeare to 2.12 bpb (wall time; nanoGPT's
#     shakespeare_char alongside when device-carry/nanogpt/train.py is
#     there), MEGABYTE base at T = 8192 and BiGS base at T = 1024: bytes/s
#     and MFU from the metrics log (megabyte-pytorch alongside when its wheel
#     is in device-carry/wheels/).
#
# On the emulated CUDA device (tests/cuda-emu), as CI runs it:
#   trainer/gpu-check.sh emulate [OUT]
# builds the debug binaries and runs every section except speed on the
# emulator, with tiny shapes (GPU_CHECK_EMULATED=1 GPU_CHECK_QUICK=1).
#
# Rehearsal without a GPU: GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1
# trainer/gpu-check.sh run /tmp/x runs every section on the CPU with tiny
# sizes, to catch mistakes in this script before spending device time.
set -uo pipefail
mode=${1:-}
carry=device-carry
dev=${GPU_CHECK_DEVICE:-cuda}
quick=${GPU_CHECK_QUICK:-0}
emulated=${GPU_CHECK_EMULATED:-0}
# The training flags that select the device under test.
on_dev() {
    if [ "$dev" = cuda ]; then echo "--device cuda --precision ${1:-bf16}"; else echo "--device cpu"; fi
}

if [ "$mode" = build ]; then
    set -e
    cargo build --release -p kilobyte-trainer
    tests=$(cargo test --release -p kilobyte-trainer --lib --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])' | tail -1)
    mkdir -p "$carry"
    cp "${CARGO_TARGET_DIR:-target}/release/kilobyte" "$carry/kilobyte"
    cp "$tests" "$carry/trainer-tests"
    # Debug info is most of their size; the device tool carries 64 MiB.
    strip "$carry/kilobyte" "$carry/trainer-tests"
    cp ../shared/data/tinyshakespeare.txt "$carry/" 2>/dev/null ||
        echo "note: ../shared/data/tinyshakespeare.txt not found; the speed check will skip"
    du -sh "$carry"
    exit 0
fi
if [ "$mode" = emulate ]; then
    set -e
    cargo build -q -p kilobyte-trainer -p kilobyte-cuda-emu
    tests=$(cargo test -q -p kilobyte-trainer --lib --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])' | tail -1)
    LD_LIBRARY_PATH=$(tests/cuda-emu/library-path) GPU_CHECK_EMULATED=1 GPU_CHECK_QUICK=1 \
        GPU_CHECK_KILOBYTE="$PWD/target/debug/kilobyte" GPU_CHECK_TESTS="$tests" exec "$0" run "${2:-.}"
fi
[ "$mode" = run ] || { echo "usage: $0 build | run [OUT] | emulate [OUT]" >&2; exit 2; }

out=${2:-.}
mkdir -p "$out"
report="$out/gpu-report.txt"
kb=${GPU_CHECK_KILOBYTE:-$PWD/$carry/kilobyte}
unit_tests=${GPU_CHECK_TESTS:-$carry/trainer-tests}
work=$(mktemp -d)
exec > >(tee "$report") 2>&1
section() { echo; echo "== $* =="; }
status=0
fail() { echo "FAIL: $*"; status=1; }

section "machine ($(date -u +%Y-%m-%dT%H:%MZ))"
if [ "$emulated" = 1 ]; then
    echo "EMULATED CUDA device (tests/cuda-emu): no GPU; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
elif [ "$dev" = cuda ]; then
    nvidia-smi | head -15
else
    echo "REHEARSAL on the CPU (GPU_CHECK_DEVICE=$dev)"
fi
if [ "$emulated" != 1 ]; then
    libs=$(find / \( -name 'libnvrtc.so*' -o -name 'libcublas.so*' \) -not -path '/proc/*' 2>/dev/null |
        xargs -r -n1 dirname | sort -u | tr '\n' ':')
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
    echo "library dirs: $libs"
fi
export KILOBYTE_CACHE="$work/cache"

section "ops, whole models and NVRTC (unit tests, KILOBYTE_REQUIRE_GPU=1)"
if [ "$dev" = cuda ]; then
    KILOBYTE_REQUIRE_GPU=1 KILOBYTE_REQUIRE_NVRTC=1 "$unit_tests" backend::cuda --nocapture --test-threads 1 2>&1 |
        grep -v '^kilobyte cuda-emu' || fail "CUDA unit tests"
else
    "$unit_tests" backend::cuda --test-threads 1 || fail "CUDA unit tests (skipping without a GPU)"
fi

# A small corpus every check can use.
python3 -c 'import random
r = random.Random(1)
words = "the of and to in is was for on that with as by at from his her it be are".split()
print(" ".join(r.choice(words) for _ in range(60000)))' > "$work/corpus.txt"
# Model shapes: micro on a GPU; on the emulator (a CPU running every CUDA
# thread as a fiber) the smallest shapes that still have every layer type.
if [ "$emulated" = 1 ]; then
    megabyte="--preset micro --patch-size 4 --d-global 32 --layers-global 1 --heads-global 2 --d-local 32 --layers-local 1 --heads-local 2 --max-seq 64"
    bigs="--model bigs --objective mlm --d-model 32 --d-expand 64 --layers 1 --modes 8 --ssm-kernels 2 --max-seq 64"
    window="--batch 2 --seq 64"
else
    megabyte="--preset micro"
    bigs="--model bigs --objective mlm --preset micro"
    window="--batch 4 --seq 256"
fi
# Flags every training check shares.
common=(--data "$work/corpus.txt" $window --lr 2e-3 --warmup 10 --eval-every 0 --eval-windows 4
    --log-every 1 --quiet)
train() { "$kb" train "${common[@]}" "$@"; }
# For the background: with exec, $! is the trainer itself (SIGKILL to a
# backgrounded function's subshell would leave the trainer running).
train_bg() { exec "$kb" train "${common[@]}" "$@"; }
losses() { python3 -c 'import json, sys
for l in open(sys.argv[1]):
    m = json.loads(l)
    if "train_loss" in m: print(m["step"], m["train_loss"])' "$1/metrics.jsonl"; }

section "50 training steps: CPU vs GPU"
for family in megabyte bigs; do
    shape=${!family}
    train $shape --steps 50 --device cpu --run "$work/cpu50-$family" >/dev/null || fail "$family CPU run"
    for p in fp32 bf16; do
        train $shape --steps 50 $(on_dev $p) --run "$work/gpu50-$family-$p" >/dev/null || fail "$family GPU $p run"
        tol=$([ $p = fp32 ] && echo 1e-3 || echo 3e-2)
        paste <(losses "$work/cpu50-$family") <(losses "$work/gpu50-$family-$p") | python3 -c "import sys
worst, steps = 0.0, 0
for line in sys.stdin:
    s, c, _, g = line.split()
    steps += 1
    worst = max(worst, abs(float(g) - float(c)) / float(c))
    if int(s) % 10 == 0: print(f'$family step {s}: cpu {float(c):.5f} gpu $p {float(g):.5f}')
print(f'$family $p: {steps} steps, worst relative loss difference {worst:.2e} (tolerance $tol)')
sys.exit(0 if worst <= $tol and steps == 50 else 1)" || fail "$family loss curves differ ($p)"
    done
done

section "kill and resume on the GPU"
ksteps=$([ "$quick" = 1 ] && echo 40 || echo 60)
train $megabyte --steps $ksteps --checkpoint-every 20 $(on_dev) --run "$work/straight" >/dev/null || fail "straight run"
train_bg $megabyte --steps $ksteps --checkpoint-every 20 $(on_dev) --run "$work/killed" >/dev/null &
pid=$!
while [ ! -d "$work/killed" ] || ! grep -q '"step":2[1-9]' "$work/killed/metrics.jsonl" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
done
kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
echo "killed with SIGKILL after step $(losses "$work/killed" | tail -1 | cut -d' ' -f1) (checkpoint every 20)"
"$kb" train --resume "$work/killed" $(on_dev) --quiet >/dev/null || fail "resume"
# Compared as .kbm files: a safetensors header lists its metadata in hash
# order, so equal checkpoints need not be equal files.
"$kb" convert "$work/straight/model.safetensors" "$work/straight.kbm" >/dev/null
"$kb" convert "$work/killed/model.safetensors" "$work/killed.kbm" >/dev/null
a=$(sha256sum < "$work/straight.kbm"); b=$(sha256sum < "$work/killed.kbm")
echo "straight: $a"; echo "resumed:  $b"
[ "$a" = "$b" ] && echo "identical weights after kill and resume" || fail "weights differ after resume"
cp -r "$work/straight" "$work/to-cpu"
sed -i "s/^train.steps = .*/train.steps = $((ksteps + 10))/" "$work/to-cpu/config.txt" 2>/dev/null
"$kb" train --resume "$work/to-cpu" --device cpu --quiet && echo "a GPU run resumed on the CPU" ||
    fail "GPU run did not resume on the CPU"

section "export and evaluate a GPU-trained model through the runtime"
# The trainer (CPU) and the runtime score the same windows of the f32
# export; both must agree with each other.
"$kb" export "$work/straight" --dtype f32 -o "$work/gpu.kbm" >/dev/null || fail "export"
ev() { "$kb" eval "$1" --data "$work/corpus.txt" --seq 64 --windows 8 2>/dev/null |
    grep -oE '[0-9]+\.[0-9]+ bits per byte' | head -1 | cut -d' ' -f1; }
a=$(ev "$work/straight"); b=$(ev "$work/gpu.kbm")
echo "trainer (run directory): $a bpb; runtime (f32 .kbm): $b bpb"
python3 -c "import sys; a, b = float('$a'), float('$b'); sys.exit(0 if abs(a - b) <= 1e-3 * a else 1)" 2>/dev/null ||
    fail "the runtime's bits per byte differ from the trainer's"

section "speed"
if [ "$emulated" = 1 ]; then
    echo "not measured on the emulated device (a CPU): speed and MFU need a real GPU"
    section "result"
    [ $status = 0 ] && echo "all GPU checks passed (emulated device)" || echo "some GPU checks FAILED (emulated device)"
    rm -rf "$work"
    exit $status
fi
limit=$([ "$quick" = 1 ] && echo 20 || echo 900)
if [ -f "$carry/tinyshakespeare.txt" ]; then
    "$kb" train --preset small --data "$carry/tinyshakespeare.txt" $(on_dev) --run "$work/ts" \
        --batch 32 --seq 1024 --lr 1e-3 --warmup 200 --steps 5000 --eval-every 250 --eval-windows 0 \
        --time-limit "$limit" --quiet
    python3 -c 'import json, sys
evals = [m for m in map(json.loads, open(sys.argv[1])) if m.get("val_bpb") is not None]
hit = [m for m in evals if m["val_bpb"] <= 2.12]
if hit:
    m = hit[0]
    print("kilobyte small: %.4f bpb at step %d after %.0f s of training" % (m["val_bpb"], m["step"], m["elapsed_s"]))
else:
    print("kilobyte small: 2.12 bpb not reached (best %.4f)" % min(m["val_bpb"] for m in evals))' "$work/ts/metrics.jsonl"
    if [ -f "$carry/nanogpt/train.py" ]; then
        (cd "$carry/nanogpt" && python3 data/shakespeare_char/prepare.py >/dev/null &&
            /usr/bin/time -f "nanoGPT shakespeare_char: %e s wall" python3 train.py config/train_shakespeare_char.py 2>&1 |
            grep -E "step [0-9]+: train|wall")
    fi
fi
shapes="megabyte base 8192 1|bigs base 1024 8"
[ "$quick" = 1 ] && shapes="megabyte micro 512 1|bigs micro 256 2"
steps=$([ "$quick" = 1 ] && echo 10 || echo 30)
IFS='|' read -ra list <<< "$shapes"
for shape in "${list[@]}"; do
    set -- $shape
    "$kb" train --model "$1" --preset "$2" --data "$work/corpus.txt" --seq "$3" --batch "$4" \
        $(on_dev) --run "$work/speed-$1" --steps "$steps" --warmup 5 --eval-every 0 --eval-windows 1 \
        --log-every 5 --quiet >/dev/null || fail "$1 $2 speed run"
    python3 -c 'import json, sys
m = [json.loads(l) for l in open(sys.argv[1]) if "bytes_per_s" in l][-1]
mfu = "%.1f%%" % (100 * m["mfu"]) if "mfu" in m else "n/a"
print("%s (T = %s, batch %s): %.0f bytes/s, MFU %s" % (sys.argv[2], sys.argv[3], sys.argv[4], m["bytes_per_s"], mfu))' \
        "$work/speed-$1/metrics.jsonl" "$1 $2" "$3" "$4"
done

section "result"
[ $status = 0 ] && echo "all GPU checks passed" || echo "some GPU checks FAILED"
rm -rf "$work"
exit $status
