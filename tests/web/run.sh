#!/usr/bin/env bash
# The page in a real browser: builds it (web/build.sh), serves web/ from a
# local server, opens index.html?selftest=1 in headless Chromium and checks
# that what the page produced (generation streamed from its Web Worker,
# classification, fill) equals the CLI's output for the same models and
# settings with the scalar kernels. Prints the page's SIMD128 bytes/s.
# Usage: tests/web/run.sh [KILOBYTE_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
kb=${1:-target/release/kilobyte}
web/build.sh "$kb"
work=$(mktemp -d)
server_pid= browser_pid=
# Keeps the script's own status: under `set -e` a failing kill (the
# browser already gone) or rm (the profile still being written) would
# otherwise turn a passing run into exit 1.
cleanup() {
    local status=$?
    if [ -n "$browser_pid" ]; then
        kill "$browser_pid" 2>/dev/null || true
        wait "$browser_pid" 2>/dev/null || true
    fi
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work" 2>/dev/null || true
    exit "$status"
}
trap cleanup EXIT

python3 tests/web/server.py web "$work/result.json" "$work/port" &
server_pid=$!
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
url="http://127.0.0.1:$(cat "$work/port")/index.html?selftest=1"

chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run \
    --user-data-dir="$work/profile" --remote-debugging-port=0 "$url" \
    >"$work/chromium.log" 2>&1 &
browser_pid=$!
for _ in $(seq 1200); do
    [ -f "$work/result.json" ] && break
    kill -0 "$browser_pid" 2>/dev/null || { cat "$work/chromium.log"; echo "chromium exited"; exit 1; }
    sleep 0.1
done
[ -f "$work/result.json" ] || { tail -20 "$work/chromium.log"; echo "no self-test result in 120 s"; exit 1; }

python3 - "$kb" "$work/result.json" <<'PY'
import json, subprocess, sys
kb, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
if not r.get("ok"):
    sys.exit(f"page self-test failed: {r.get('error')}")
env = {"KILOBYTE_KERNELS": "scalar", "PATH": "/usr/bin:/bin"}
def cli(*args):
    return subprocess.run([kb, *args], env=env, capture_output=True, check=True).stdout
g = r["request"]["generate"]
want = cli("generate", "web/models/selftest-megabyte.kbm", "--prompt", g["prompt"],
           "--bytes", str(g["bytes"]), "--temperature", str(g["temperature"]),
           "--top-k", str(g["topK"]), "--top-p", str(g["topP"]), "--seed", str(g["seed"]),
           "--context", str(g["context"])).hex()
assert r["generateHex"] == want, f"page generated {r['generateHex']}, CLI {want}"
want = [cli("classify", "web/models/selftest-bigs.kbm", t).decode().rstrip("\n")
        for t in r["request"]["classify"]]
assert r["classify"] == want, f"page classified {r['classify']}, CLI {want}"
want = cli("fill", "web/models/selftest-bigs.kbm", r["request"]["fill"]).rstrip(b"\n").hex()
assert r["fillHex"] == want, f"page filled {r['fillHex']}, CLI {want}"
assert r["simd"], "the page did not run the SIMD128 kernels"
print(f"browser: generation, classification and fill match the CLI; "
      f"{r['bytesPerSecond']:.0f} bytes/s (micro q8, SIMD128) in {r['userAgent']}")
PY
