#!/usr/bin/env bash
# Command 1: set up, build the embedded data set, execute every chapter in the cpu profile (outputs saved into
# the chapters), and build the HTML book.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)  # the whole command, set-up included
bash scripts/setup.sh
export NUMBA_CACHE_DIR="$PWD/.cache/numba" MPLBACKEND=Agg
.venv/bin/python -m glcl_core main
.venv/bin/python scripts/chapters.py run --profile "${GLCL_PROFILE:-cpu}" --inplace --jobs "${GLCL_JOBS:-2}"
bash scripts/vendor_js.sh
.venv/bin/jupyter-book build . -W --keep-going
echo "[main] done in $(( $(date +%s) - start )) s; the book: file://$PWD/_build/html/index.html ($(du -sh _build/html | cut -f1))"
