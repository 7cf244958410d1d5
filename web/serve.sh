#!/usr/bin/env bash
# Builds the page's module and models (web/build.sh, with a 30-second demo
# training run the first time) and serves web/ on http://127.0.0.1:PORT/.
# Usage: web/serve.sh [PORT]  (default 8017)
set -euo pipefail
cd "$(dirname "$0")/.."
KILOBYTE_DEMO_TRAIN=${KILOBYTE_DEMO_TRAIN:-30} web/build.sh
port=${1:-8017}
echo "kilobyte page: http://127.0.0.1:$port/"
exec python3 -m http.server "$port" --bind 127.0.0.1 --directory web
