#!/usr/bin/env bash
# The long cpu-profile computations of the label-efficiency study, as two lanes of one single-threaded process each
# (2 cores). Every step skips what is finished, so after an interruption the same command continues:
#
#   mkdir -p runs/logs
#   nohup bash scripts/evidence_queue.sh A >> runs/logs/lane_A.log 2>&1 &
#   nohup bash scripts/evidence_queue.sh B >> runs/logs/lane_B.log 2>&1 &
#
# What survives a fresh checkout is what is committed: the exported checkpoints (glcl_core/pretrained, or results/pretrained/PRESET, with their
# manifest) and the grids' text files (results/grids/cpu-PRESET: results.csv and each cell's history). Runs in
# progress under runs/ are lost with the checkout, so lane A pre-trains one shipped initialisation at a time (about
# 1.6 h of one core for 3000 global steps) and exports it as soon as it is finished: commit
# glcl_core/pretrained and results/grids after each session. The two lanes never work on the same run or grid cell.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MPLBACKEND=Agg GLCL_PROGRESS=0
export GLCL_DATA_DIR="${GLCL_DATA_DIR:-$PWD/.cache/glcl_data}" NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.cache/numba}"
PY="${PYTHON:-.venv/bin/python}"
PRESET="${PRESET:-multicontrast}"  # PRESET=standard bash scripts/evidence_queue.sh A: another preset

budget() { "$PY" scripts/pretraining_budget.py --profile cpu "$@"; }
shipped() { "$PY" scripts/pretrain_shipped.py --profile cpu --embedded "$PRESET" "$@"; }
grid() { "$PY" scripts/evidence_grid.py --profile cpu --embedded "$PRESET" "$@"; }

case "${1:-}" in
A)
    # the shipped initialisations not exported yet (the claim's first), each exported as soon as it is finished;
    # exported ones are skipped, and a local stage starts from its exported global stage
    for init in GD+LR GR PCL GD- GD+LD PCL+LR; do
        shipped --inits "$init" --from-shipped
        shipped --export
    done
    # the validation measures of the long budget, from the exported weights (no pre-training)
    budget --embedded "$PRESET" --budgets 3000 --inits PCL GR GD GD+LR --shipped
    grid --inits GD- GD+LD PCL+LR
    ;;
B)
    # the claim's grid cells from the exported weights; later passes pick up what lane A exported meanwhile
    for pass in 1 2 3; do
        grid --inits random GR GD GD+LR PCL
    done
    ;;
*)
    echo "usage: bash scripts/evidence_queue.sh A|B" >&2
    exit 2
    ;;
esac
