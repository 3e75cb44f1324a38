#!/usr/bin/env bash
# Command 2: set up, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NUMBA_CACHE_DIR="$PWD/.cache/numba"
export MPLBACKEND=Agg
export GLCL_PROFILE=ci
.venv/bin/python -m pytest "$@"
