#!/usr/bin/env bash
# The long cpu-profile computations of the label-efficiency study, as two lanes of one single-threaded process each
# (2 cores). Every step skips what is finished, so after an interruption the same command continues:
#
#   mkdir -p runs/logs
#   nohup bash scripts/evidence_queue.sh A >> runs/logs/lane_A.log 2>&1 &
#   nohup bash scripts/evidence_queue.sh B >> runs/logs/lane_B.log 2>&1 &
#   bash scripts/evidence_queue.sh status                 # what is exported, which cells are finished
#
# What survives a fresh checkout is what is committed: the exported checkpoints (glcl_core/pretrained, or
# results/pretrained/PRESET, with their manifest) and the grids' text files (results/grids/cpu-PRESET: results.csv
# and each cell's history). Runs in progress under runs/ are lost with the checkout, so lane A pre-trains one
# initialisation at a time (about 1.6 h of one core for 3000 global steps) and exports it as soon as it is
# finished: commit the checkpoint folder and results/grids after each session. Both lanes work through the grids
# with --shared (each takes the cells the other one is not running): lane B starts with the fine-tuning grid, lane
# A, once its pre-training is done, with the frozen-encoder probe, and each then helps with the other grid.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MPLBACKEND=Agg GLCL_PROGRESS=0 PYTHONUNBUFFERED=1
export GLCL_DATA_DIR="${GLCL_DATA_DIR:-$PWD/.cache/glcl_data}" NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.cache/numba}"
PY="${PYTHON:-.venv/bin/python}"
PRESET="${PRESET:-multicontrast}"  # PRESET=standard bash scripts/evidence_queue.sh A: another preset

budget() { "$PY" scripts/pretraining_budget.py --profile cpu "$@"; }
shipped() { "$PY" scripts/pretrain_shipped.py --profile cpu --embedded "$PRESET" "$@"; }
grid() { "$PY" scripts/evidence_grid.py --profile cpu --embedded "$PRESET" "$@"; }
shared_grid() { grid --shared "$@"; }  # lanes A and B share the grid folders cell by cell

# the claim's initialisations first; the full eight-initialisation grid is run on the shipped preset only, the
# other presets get the three views (random, G^R, G^D, PCL, G^D + L^R). G^D comes before G^D + L^R so that its
# global stage is exported (and can be committed) before the local stage starts: no run is longer than one
# stage, about 1 to 1.5 hours of one core
INITS="GD GD+LR GR PCL" GRID_INITS="random GR GD PCL GD+LR"
if [ "$PRESET" = multicontrast ]; then
    INITS="$INITS GD- GD+LD PCL+LR" GRID_INITS="$GRID_INITS GD- GD+LD PCL+LR"
fi
FINETUNE_STEPS="0 2 3 5" PROBE_STEPS="1 4"  # entries of evidence_grid.PLAN

case "${1:-}" in
A)
    # the initialisations not exported yet, each exported as soon as it is finished; exported ones are skipped,
    # and a local stage starts from its exported global stage
    for init in $INITS; do
        shipped --inits "$init" --from-shipped
        shipped --export
    done
    shared_grid --steps $PROBE_STEPS --inits $GRID_INITS
    shared_grid --steps $FINETUNE_STEPS --inits $GRID_INITS  # the fine-tuning cells lane B has not started
    # the validation measures of the long budget, from the exported weights (no pre-training)
    budget --embedded "$PRESET" --budgets 3000 --inits PCL GR GD GD+LR --shipped
    if [ "$PRESET" = standard ]; then
        # the sweep's shorter budgets for G^R and PCL (the first sweep on this preset measured G^D and G^D + L^R
        # only, at 300, 1000 and 3000 steps, to choose the long budget)
        budget --embedded standard --budgets 300 1000 --inits GR PCL
    fi
    ;;
B)
    # the fine-tuning grid from the exported weights; while initialisations are still missing, it waits for lane A
    # to export them (a pass over finished cells only reads them) and goes on
    # (the pass's output goes to the lane's log as it comes and to a copy that is searched; a failing grid stops
    # the lane)
    pass_log="$(mktemp)"
    while true; do
        if ! shared_grid --steps $FINETUNE_STEPS --inits $GRID_INITS 2>&1 | tee "$pass_log"; then
            exit 1
        fi
        grep -q "waiting for" "$pass_log" || break
        sleep 600
    done
    rm -f "$pass_log"
    shared_grid --steps $PROBE_STEPS --inits $GRID_INITS  # the probe cells lane A has not started
    ;;
status)
    # what is exported and which grid cells are finished (reads files only)
    "$PY" -c "import sys; sys.path.insert(0, 'scripts'); from pretrain_shipped import default_folder; \
from glcl_core import checkpoints; f = default_folder('cpu', '$PRESET'); \
print(f'exported in {f}:', ', '.join(checkpoints.available(f)) if (f / 'manifest.json').is_file() else 'nothing')"
    grid --status --inits $GRID_INITS
    ;;
*)
    echo "usage: bash scripts/evidence_queue.sh A|B|status" >&2
    exit 2
    ;;
esac
