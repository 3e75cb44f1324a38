#!/usr/bin/env bash
# The long cpu-profile computations of the label-efficiency study, as two lanes of one single-threaded process each
# (2 cores). Every step resumes from its checkpoints and skips finished cells, so after an interruption the same
# command continues where it stopped:
#
#   nohup bash scripts/evidence_queue.sh A >> runs/logs/lane_A.log 2>&1 &
#   nohup bash scripts/evidence_queue.sh B >> runs/logs/lane_B.log 2>&1 &
#
# Lane A: the budget sweep on the standard preset (validation only), then the shipped initialisations the sweep
# does not make (G^D-, G^D + L^D, PCL + L^R), then its share of the test-set grid.
# Lane B: the long runs on the shipped preset (G^D, G^D + L^R, G^R, PCL with their validation measures), then the
# test-set grid of the label-efficiency curves. Each lane's grid cells are disjoint from the other's.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MPLBACKEND=Agg GLCL_PROGRESS=0
export GLCL_DATA_DIR="${GLCL_DATA_DIR:-$PWD/.cache/glcl_data}" NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.cache/numba}"
PY="${PYTHON:-.venv/bin/python}"
PRESET=multicontrast

export_weights() {
    "$PY" scripts/pretrain_shipped.py --profile cpu --embedded "$PRESET" --reuse runs/budget-cpu --export
}

case "${1:-}" in
A)
    "$PY" scripts/pretraining_budget.py --profile cpu --inits GD+LR GR PCL
    "$PY" scripts/pretrain_shipped.py --profile cpu --embedded "$PRESET" --reuse runs/budget-cpu --inits GD- GD+LD PCL+LR
    export_weights
    "$PY" scripts/evidence_grid.py --profile cpu --embedded "$PRESET" --inits GD- GD+LD PCL+LR PCL
    ;;
B)
    "$PY" scripts/pretraining_budget.py --profile cpu --embedded "$PRESET" --budgets 3000 --inits GD random GD+LR GR PCL
    export_weights
    "$PY" scripts/evidence_grid.py --profile cpu --embedded "$PRESET" --inits random GR GD GD+LR
    export_weights
    "$PY" scripts/evidence_grid.py --profile cpu --embedded "$PRESET" --inits random GR GD GD+LR
    ;;
*)
    echo "usage: bash scripts/evidence_queue.sh A|B" >&2
    exit 2
    ;;
esac
