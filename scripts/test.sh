#!/usr/bin/env bash
# Command 2: set up, then run every test: the library's tests, every chapter executed (papermill, ci profile),
# nbval on the chapters, the book built with -W and checked in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing headless Chromium (Debian package) for the rendered-book test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export NUMBA_CACHE_DIR="$PWD/.cache/numba" MPLBACKEND=Agg GLCL_PROFILE=ci GLCL_PROGRESS=0
.venv/bin/python -m pytest tests book --nbval-lax --nbval-current-env -p no:cacheprovider "$@"
