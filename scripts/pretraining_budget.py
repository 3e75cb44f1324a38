"""How long to pre-train, judged on validation volumes only: a frozen-encoder probe and fine-tuning Dice against
the pre-training budget.

For each initialisation (G^R, G^D, PCL, G^D + L^R; random init as the reference) and each global budget (e.g. 300,
1000 and 3000 steps; the local stage gets the profile's local/global ratio of it, 200/300 in the cpu profile):

* the global stage runs once per strategy to the largest budget, and a snapshot is kept at every budget on the way.
  The profiles' global stage uses Adam at a constant learning rate, so the snapshot at step b is the weights of a
  b-step run (no schedule depends on the length); the script refuses a schedule that would;
* the local stage starts from each snapshot and runs its proportional length;
* two measures on the validation volumes, with one labelled volume (draw ``seed``):
  - ``probe``: encoder (and pre-trained decoder blocks) frozen, the rest trained for ``--probe-steps``
    (``FinetuneConfig.freeze``); Dice at every evaluation;
  - ``finetune``: the usual fine-tuning, Dice at every evaluation (every 50 steps in the cpu profile).

Wall times are per stage; a stage interrupted and resumed is timed over its last session and scaled to all its
steps (an estimate). One row per (initialisation, budget, measure, seed, evaluated step) is appended to the CSV;
finished (initialisation, budget, measure, seed) cells are skipped when the command runs again, and unfinished runs
resume from their checkpoints, so an interrupted sweep continues where it stopped:

    python scripts/pretraining_budget.py --profile cpu --inits random GR GD PCL GD+LR --budgets 300 1000 3000 \
        --out results/pretraining_budget_cpu.csv --runs runs/budget-cpu

``--shipped`` measures the long budget (3000 global steps in the cpu profile) from the shipped checkpoints
(glcl_core/pretrained) where one matches the configuration, instead of pre-training again; the row's
``pretrain_seconds`` is then the manifest's wall time.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from glcl_core import checkpoints
from glcl_core.data.split import draw_labelled
from glcl_core.experiment import INITIALISATIONS, prepare_split
from glcl_core.train.checkpoint import resumed_step
from glcl_core.train.config import RunConfig, make_config
from glcl_core.train.finetuning import finetune
from glcl_core.train.pretrain import pretrain_global, pretrain_local
from pretrain_shipped import default_folder  # scripts/ is on the path when this file is run

COLUMNS = ["embedded", "init", "global_steps", "local_steps", "measure", "n_labelled", "seed", "step", "val_dice",
           "pretrain_seconds", "measure_seconds", "threads", "machine"]


def done_cells(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    with open(path, newline="") as fh:
        return {(r["embedded"], r["init"], int(r["global_steps"]), r["measure"], int(r["seed"]))
                for r in csv.DictReader(fh)}


def append(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


def scaled_seconds(seconds: float, steps: int, steps_timed: int) -> float:
    """Wall time of ``steps`` steps from a run that timed only its last ``steps_timed`` (it was interrupted and
    resumed): scaled in proportion, an estimate."""
    return seconds * steps / max(1, steps_timed)


def global_snapshots(cfg: RunConfig, strategy: str, budgets: list[int], split,
                     runs: Path) -> dict[int, tuple[Path, float]]:
    """{budget: (checkpoint, cumulative seconds)} of one global stage continued from budget to budget."""
    if cfg.global_.schedule != "constant":
        raise SystemExit("snapshots stand for shorter runs only under a constant learning rate; "
                         f"this configuration has schedule {cfg.global_.schedule!r}")
    run_dir, snap_dir = runs / "global" / strategy, runs / "snapshots" / strategy
    snap_dir.mkdir(parents=True, exist_ok=True)
    out: dict[int, tuple[Path, float]] = {}
    seconds = 0.0
    for budget in sorted(budgets):
        snap = snap_dir / f"g{budget}.pt"
        timing = snap.with_suffix(".seconds")
        if not snap.exists():
            c = RunConfig.from_dict(cfg.to_dict())
            c.global_.strategy, c.global_.iterations = strategy, budget
            first = max(out) if out else 0  # this segment's steps: first..budget
            resumed_at = max(first, resumed_step(run_dir))
            t0 = time.perf_counter()
            pretrain_global(c, split.pool, out=run_dir, resume=True, progress="lines", val=split.val)
            seconds_here = scaled_seconds(time.perf_counter() - t0, budget - first, budget - resumed_at)
            tmp = snap.with_suffix(".tmp")
            shutil.copyfile(run_dir / "final.pt", tmp)
            os.replace(tmp, snap)
            previous = out[max(out)][1] if out else 0.0
            timing.write_text(f"{previous + seconds_here:.1f}\n")
        seconds = float(timing.read_text()) if timing.exists() else float("nan")
        out[budget] = (snap, seconds)
    return out


def local_snapshot(cfg: RunConfig, init: str, budget: int, global_ckpt: Path, split,
                   runs: Path) -> tuple[Path, int, float]:
    global_strategy, local_strategy = INITIALISATIONS[init]
    ratio = make_config(cfg.profile).local.iterations / make_config(cfg.profile).global_.iterations
    steps = max(1, round(budget * ratio))
    run_dir = runs / "local" / init / f"g{budget}"
    timing = run_dir / "seconds"
    if not (run_dir / "final.pt").exists() or not timing.exists():
        c = RunConfig.from_dict(cfg.to_dict())
        c.global_.strategy, c.local.strategy, c.local.iterations = global_strategy, local_strategy, steps
        resumed_at = resumed_step(run_dir)
        t0 = time.perf_counter()
        pretrain_local(c, split.pool, init=global_ckpt, out=run_dir, resume=True, progress="lines", val=split.val)
        timing.write_text(f"{scaled_seconds(time.perf_counter() - t0, steps, steps - resumed_at):.1f}\n")
    return run_dir / "final.pt", steps, float(timing.read_text())


def shipped_snapshots(profile: str, embedded: str, inits, folder: Path | None = None) -> dict[tuple[str, int], tuple]:
    """{(init, global steps): (checkpoint, local steps, wall seconds)} for the shipped checkpoints of the long budget
    that match this profile and preset (hash checked); initialisations without one are left out."""
    cfg = make_config(profile, seed=0, budget="long", data={"embedded": embedded})
    manifest = checkpoints.read_manifest(folder)
    found = {}
    for init in inits:
        if INITIALISATIONS[init][0] is None:
            continue
        try:
            path = checkpoints.shipped_weights(cfg, [init], folder)[init]
        except checkpoints.CheckpointError:
            continue
        entry = next(e for e in manifest.values() if e["file"] == Path(path).name)
        local_steps = cfg.local.iterations if INITIALISATIONS[init][1] else 0
        found[(init, cfg.global_.iterations)] = (Path(path), local_steps, float(entry["wall_seconds"]))
    return found


def measure(cfg: RunConfig, kind: str, init_ckpt: Path | None, labelled, split, steps: int, run_dir: Path):
    c = RunConfig.from_dict(cfg.to_dict())
    c.finetune.n_labelled = len(labelled)
    if kind == "probe":
        c.finetune.freeze, c.finetune.iterations = True, steps
    t0 = time.perf_counter()
    result = finetune(c, labelled, split.val, init=init_ckpt, out=run_dir, resume=True, progress=False)
    seconds = time.perf_counter() - t0
    evals = [(int(r["step"]), float(r["val_dice"])) for r in result.history.to_dict("records")
             if r.get("val_dice") == r.get("val_dice") and "val_dice" in r]
    return evals, seconds


def summarize(csv: Path, figures: Path, profile: str) -> list[Path]:
    """Print the sweep's table per preset (validation Dice against the budget) and save its figure as
    ``figures/pretraining_budget_{profile}_{preset}.png``; returns the figures written."""
    import pandas as pd

    from glcl_core.analysis.study import budget_table
    from glcl_core.viz.study import plot_budget

    if not csv.is_file():
        raise SystemExit(f"{csv}: no budget sweep here to summarise (run the sweep first, without --summary)")
    rows = pd.read_csv(csv)
    figures.mkdir(parents=True, exist_ok=True)
    written = []
    for preset in rows["embedded"].unique():
        table = budget_table(rows, preset)
        print(f"\n{preset} (validation, one labelled volume, labelled draws "
              f"{sorted(int(s) for s in rows.loc[rows['embedded'] == preset, 'seed'].unique())})")
        print(table.round(3).to_string(index=False))
        fig = plot_budget(table, title=f"{preset} preset: validation Dice against the pre-training budget "
                                       f"(one labelled volume)")
        written.append(figures / f"pretraining_budget_{profile}_{preset}.png")
        fig.savefig(written[-1])
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--embedded", default="standard")
    p.add_argument("--inits", nargs="+", default=["random", "GR", "GD", "PCL", "GD+LR"])
    p.add_argument("--budgets", nargs="+", type=int, default=[300, 1000, 3000])
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="labelled draws (one volume each)")
    p.add_argument("--probe-steps", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("results/pretraining_budget_cpu.csv"))
    p.add_argument("--runs", type=Path, default=Path("runs/budget-cpu"))
    p.add_argument("--shipped", action="store_true",
                   help="take the long budget's weights from the shipped checkpoints where they match")
    p.add_argument("--folder", type=Path, default=None,
                   help="checkpoint folder for --shipped (default: the preset's, as "
                        "scripts/pretrain_shipped.py exports)")
    p.add_argument("--summary", action="store_true",
                   help="run nothing: print each preset's table of --out and save its figure under --figures")
    p.add_argument("--figures", type=Path, default=Path("results/figures"))
    args = p.parse_args(argv)
    if args.summary:
        summarize(args.out, args.figures, args.profile)
        return

    cfg = make_config(args.profile, data={"embedded": args.embedded})
    split = prepare_split(cfg)
    runs = args.runs / args.embedded
    done = done_cells(args.out)
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    folder = args.folder or default_folder(args.profile, args.embedded)
    shipped = shipped_snapshots(args.profile, args.embedded, args.inits, folder) if args.shipped else {}
    for init in args.inits:
        global_strategy, local_strategy = INITIALISATIONS[init]
        budgets = [0] if global_strategy is None else args.budgets
        for budget in budgets:
            # measured as soon as its snapshot exists, so an interrupted sweep keeps every finished budget
            from_shipped = shipped.get((init, budget))
            snaps = (global_snapshots(cfg, global_strategy, [b for b in args.budgets if b <= budget], split, runs)
                     if global_strategy and not from_shipped and not all(
                         (args.embedded, init, budget, kind, seed) in done
                         for seed in args.seeds for kind in ("probe", "finetune")) else {})
            for seed in args.seeds:
                for kind in ("probe", "finetune"):
                    if (args.embedded, init, budget, kind, seed) in done:
                        continue
                    ckpt, local_steps, seconds = None, 0, 0.0
                    if from_shipped:
                        ckpt, local_steps, seconds = from_shipped
                    elif global_strategy:
                        ckpt, seconds = snaps[budget]
                        if local_strategy:
                            ckpt, local_steps, local_seconds = local_snapshot(cfg, init, budget, ckpt, split, runs)
                            seconds += local_seconds
                    c = RunConfig.from_dict(cfg.to_dict())
                    c.seed = seed
                    labelled = draw_labelled(split.pool, 1, seed)
                    run_dir = runs / kind / init / f"g{budget}_s{seed}"
                    evals, measure_seconds = measure(c, kind, ckpt, labelled, split, args.probe_steps, run_dir)
                    rows = [{"embedded": args.embedded, "init": init, "global_steps": budget,
                             "local_steps": local_steps, "measure": kind, "n_labelled": 1, "seed": seed,
                             "step": step, "val_dice": f"{dice:.6f}", "pretrain_seconds": f"{seconds:.1f}",
                             "measure_seconds": f"{measure_seconds:.1f}", "threads": torch.get_num_threads(),
                             "machine": machine} for step, dice in evals]
                    append(args.out, rows)
                    print(f"{init} g{budget} {kind} seed {seed}: " +
                          ", ".join(f"{s}: {d:.3f}" for s, d in evals), flush=True)


if __name__ == "__main__":
    main()
