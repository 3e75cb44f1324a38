#!/usr/bin/env bash
# The long cpu-profile computations of the label-efficiency study, as two lanes of one single-threaded process each
# (2 cores). Every step resumes from its checkpoints and skips finished cells, so after an interruption the same
# command continues where it stopped:
#
#   nohup bash scripts/evidence_queue.sh A >> runs/logs/lane_A.log 2>&1 &
#   nohup bash scripts/evidence_queue.sh B >> runs/logs/lane_B.log 2>&1 &
#
# The claim's cells come first: the shipped preset's long runs (G^D, G^D + L^R, G^R, PCL, with their validation
# measures), then its test-set grid; the initialisations only the full grid needs and the rest of the validation
# budget sweep on the standard preset come last. The two lanes never work on the same run or grid cell.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MPLBACKEND=Agg GLCL_PROGRESS=0
export GLCL_DATA_DIR="${GLCL_DATA_DIR:-$PWD/.cache/glcl_data}" NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.cache/numba}"
PY="${PYTHON:-.venv/bin/python}"
PRESET=multicontrast

budget() { "$PY" scripts/pretraining_budget.py --profile cpu "$@"; }
export_weights() { "$PY" scripts/pretrain_shipped.py --profile cpu --embedded "$PRESET" --reuse runs/budget-cpu --export; }
grid() { "$PY" scripts/evidence_grid.py --profile cpu --embedded "$PRESET" "$@"; }

case "${1:-}" in
A)
    budget --inits GD+LR                                              # standard preset, 300/1000/3000 steps
    budget --embedded "$PRESET" --budgets 3000 --inits GR PCL
    "$PY" scripts/pretrain_shipped.py --profile cpu --embedded "$PRESET" --reuse runs/budget-cpu --inits GD- GD+LD PCL+LR
    export_weights
    grid --inits PCL GD- GD+LD PCL+LR
    budget --inits GR PCL                                             # the rest of the standard-preset sweep
    ;;
B)
    budget --embedded "$PRESET" --budgets 3000 --inits GD random GD+LR
    for pass in 1 2 3; do  # later passes pick up initialisations lane A exported meanwhile
        export_weights
        grid --inits random GR GD GD+LR
    done
    ;;
*)
    echo "usage: bash scripts/evidence_queue.sh A|B" >&2
    exit 2
    ;;
esac
