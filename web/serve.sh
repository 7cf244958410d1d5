#!/usr/bin/env bash
# Builds the page's module and models (web/build.sh) and serves web/ on
# http://127.0.0.1:PORT/ (static files only; any static server will do).
# Usage: web/serve.sh [PORT]  (default 8017)
set -euo pipefail
cd "$(dirname "$0")/.."
web/build.sh
port=${1:-8017}
echo "kilobyte page: http://127.0.0.1:$port/"
exec python3 -m http.server "$port" --bind 127.0.0.1 --directory web
