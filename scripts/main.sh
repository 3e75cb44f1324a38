#!/usr/bin/env bash
# Command 1: set up, then run the main job on the embedded data set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NUMBA_CACHE_DIR="$PWD/.cache/numba"
.venv/bin/python -m glcl_core main "$@"
