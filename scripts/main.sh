#!/usr/bin/env bash
# Command 1: set up, build the embedded data set, execute every chapter in the cpu profile (outputs saved into
# the chapters), and build the HTML book.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)  # the whole command, set-up included
bash scripts/setup.sh
export NUMBA_CACHE_DIR="$PWD/.cache/numba" MPLBACKEND=Agg
# the other two embedded presets the chapters read are built beside the main job's (one core each), so that no
# chapter builds one inside its own run; the book's JavaScript is fetched while the chapters run
build() { .venv/bin/python -c "from glcl_core.data import embedded_dataset; embedded_dataset(params='$1')"; }
build multicontrast & multicontrast=$!
build varied & varied=$!
.venv/bin/python -m glcl_core main
wait "$multicontrast"
wait "$varied"
mkdir -p .cache
bash scripts/vendor_js.sh > .cache/vendor_js.log 2>&1 & vendor=$!
.venv/bin/python scripts/chapters.py run --profile "${GLCL_PROFILE:-cpu}" --inplace --jobs "${GLCL_JOBS:-2}"
if ! wait "$vendor"; then
  cat .cache/vendor_js.log >&2
  exit 1
fi
cat .cache/vendor_js.log
.venv/bin/jupyter-book build . -W --keep-going
echo "[main] done in $(( $(date +%s) - start )) s; the book: file://$PWD/_build/html/index.html ($(du -sh _build/html | cut -f1))"
