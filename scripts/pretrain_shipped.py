"""Pre-train the seven shipped initialisations at the long budget and export them to ``glcl_core/pretrained``.

The shipped checkpoints are G^R, G^D-, G^D, PCL (global stage, 3000 steps in the cpu profile) and G^D + L^R,
G^D + L^D, PCL + L^R (then the local stage, 2000 steps), all with ``make_config(profile, budget="long")`` on one
embedded preset. Each run resumes from its last checkpoint, so the command can be repeated until all are done:

    python scripts/pretrain_shipped.py --profile cpu --embedded multicontrast            # pre-train (resumes)
    python scripts/pretrain_shipped.py --profile cpu --embedded multicontrast --export   # write finished ones

``--from-shipped`` starts a local initialisation (e.g. PCL + L^R) from the shipped checkpoint of its global stage
(PCL), so only the local stage runs. ``--reuse runs/budget-cpu`` takes global stages (and G^D + L^R) that
scripts/pretraining_budget.py already ran to the same configuration instead of running them again (the
configuration is checked). Wall times are per run; a run
that was interrupted and resumed is timed over the steps of its last session and scaled to the whole run (marked
``wall_seconds_estimated`` in the manifest).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from glcl_core import checkpoints
from glcl_core.experiment import INITIALISATIONS, prepare_split, pretrain
from glcl_core.train.checkpoint import resumed_step
from glcl_core.train.config import RunConfig, make_config

SHIPPED = ("GR", "GD-", "GD", "PCL", "GD+LR", "GD+LD", "PCL+LR")


def shipped_config(profile: str, embedded: str) -> RunConfig:
    return make_config(profile, seed=0, budget="long", data={"embedded": embedded})


def default_folder(profile: str, embedded: str) -> Path:
    """glcl_core/pretrained for the shipped preset's cpu checkpoints (inside the package: the chapters load them);
    results/pretrained/EMBEDDED for another preset's cpu checkpoints (committed beside the grids that use them, not
    installed with the package); runs/shipped-PROFILE/EMBEDDED/export for other profiles (not committed)."""
    if (profile, embedded) == ("cpu", checkpoints.SHIPPED_EMBEDDED):
        return checkpoints.DEFAULT_FOLDER
    if profile == "cpu":
        return Path("results") / "pretrained" / embedded
    return Path("runs") / f"shipped-{profile}" / embedded / "export"


def stage_dir(runs: Path, init: str) -> Path:
    """Where experiment.pretrain keeps an initialisation's run: pretrain/GD for a global, pretrain/GD+LR for a local."""
    return runs / "pretrain" / init


def reuse_budget_runs(cfg: RunConfig, runs: Path, budget_runs: Path, inits) -> None:
    """Copy finished runs of scripts/pretraining_budget.py at this budget into ``runs`` (config checked)."""
    preset, steps = cfg.data.embedded, cfg.global_.iterations
    for init in inits:
        global_strategy, local_strategy = INITIALISATIONS[init]
        target = stage_dir(runs, init)
        if (target / "final.pt").exists():
            continue
        if local_strategy is None:
            weights = budget_runs / preset / "snapshots" / global_strategy / f"g{steps}.pt"
            config_file = budget_runs / preset / "global" / global_strategy / "config.json"
            timing = weights.with_suffix(".seconds")
        else:
            run = budget_runs / preset / "local" / init / f"g{steps}"
            weights, config_file, timing = run / "final.pt", run / "config.json", run / "seconds"
        if not (weights.exists() and config_file.exists()):
            continue
        source_cfg = RunConfig.from_json(config_file)
        # The budget script's configs record the global length of their own segment (global folder) or the
        # profile's (local folder); the weights are those of the g{steps} snapshot in both cases.
        source_cfg.global_.iterations = steps
        diff = checkpoints.pretraining_differences(source_cfg, cfg, init)
        if diff:
            print(f"{init}: not reused from {weights} ({'; '.join(diff[:3])})")
            continue
        target.mkdir(parents=True, exist_ok=True)
        source_cfg.to_json(target / "config.json")
        shutil.copyfile(weights, target / "final.pt")
        seconds = float(timing.read_text()) if timing.exists() else float("nan")
        (target / "wall.json").write_text(json.dumps({"seconds": seconds, "reused_from": str(weights)}) + "\n")
        print(f"{init}: reused {weights} ({seconds:.0f} s)")


def seed_from_shipped(cfg: RunConfig, runs: Path, global_strategy: str, folder: Path | None) -> bool:
    """Start a local initialisation from the shipped checkpoint of its global stage instead of pre-training that
    stage again. The local stage reads only the (frozen) encoder, which the shipped file holds unchanged, so the
    result is the same as from the original run. The checkpoint's hash and pre-training configuration are checked;
    its manifest wall time is carried over. Returns whether the global stage is now in ``runs``."""
    target = stage_dir(runs, global_strategy)
    if (target / "final.pt").exists():
        return True
    try:
        path = checkpoints.shipped_weights(cfg, [global_strategy], folder)[global_strategy]
    except checkpoints.CheckpointError as err:
        print(f"{global_strategy}: not seeded from the shipped checkpoints ({err})")
        return False
    entry = next(e for e in checkpoints.read_manifest(path.parent).values() if e["file"] == path.name)
    target.mkdir(parents=True, exist_ok=True)
    RunConfig.from_dict(entry["config"]).to_json(target / "config.json")
    shutil.copyfile(path, target / "final.pt")
    (target / "wall.json").write_text(json.dumps({"seconds": entry["wall_seconds"], "reused_from": str(path)}) + "\n")
    print(f"{global_strategy}: global stage taken from the shipped {path} ({entry['wall_seconds']:.0f} s)")
    return True


def run_all(cfg: RunConfig, runs: Path, inits, reuse: Path | None = None, from_shipped: Path | None = None) -> None:
    split = prepare_split(cfg)
    for init in inits:
        global_strategy, local_strategy = INITIALISATIONS[init]
        if from_shipped is not None and local_strategy is not None:
            seed_from_shipped(cfg, runs, global_strategy, from_shipped)
        for part in ([global_strategy] if local_strategy is None else [global_strategy, init]):
            if reuse:  # looked up just before the run: another process may have finished it meanwhile
                reuse_budget_runs(cfg, runs, reuse, [part])
            target = stage_dir(runs, part)
            if (target / "final.pt").exists():
                continue
            resumed_at = resumed_step(target)
            t0 = time.perf_counter()
            pretrain(part, cfg, split.pool, out=runs, progress="lines", val=split.val)
            seconds = time.perf_counter() - t0
            total = cfg.local.iterations if "+" in part else cfg.global_.iterations
            estimated = resumed_at > 0
            if estimated:
                seconds *= total / max(1, total - resumed_at)
            (target / "wall.json").write_text(json.dumps({"seconds": round(seconds, 1), "estimated": estimated}) + "\n")
            print(f"{part}: {seconds:.0f} s{' (estimated)' if estimated else ''}")


def wall_seconds(runs: Path, init: str) -> tuple[float, bool]:
    global_strategy, local_strategy = INITIALISATIONS[init]
    parts = [global_strategy] if local_strategy is None else [global_strategy, init]
    total, estimated = 0.0, False
    for part in parts:
        record = json.loads((stage_dir(runs, part) / "wall.json").read_text())
        total += record["seconds"]
        estimated |= bool(record.get("estimated"))
    return total, estimated


def export_all(cfg: RunConfig, runs: Path, inits, dtype: str, folder: Path | None) -> None:
    """Export every finished run not yet in the folder's manifest with this configuration (others are named)."""
    for init in inits:
        final = stage_dir(runs, init) / "final.pt"
        if not final.exists():
            print(f"{init}: not finished ({final} missing); run the command without --export first")
            continue
        try:
            checkpoints.shipped_weights(cfg, [init], folder)
            print(f"{init}: already exported")
            continue
        except checkpoints.CheckpointError:
            pass
        diff = checkpoints.pretraining_differences(RunConfig.from_json(final.parent / "config.json"), cfg, init)
        if diff:
            sys.exit(f"{final}: pre-trained with other settings than the shipped configuration ({'; '.join(diff[:3])})")
        seconds, estimated = wall_seconds(runs, init)
        command = (f"python scripts/pretrain_shipped.py --profile {cfg.profile} --embedded {cfg.data.embedded} "
                   f"--inits {init}")
        entry = checkpoints.export(final, init, command=command, wall_seconds=seconds, folder=folder, dtype=dtype,
                                   wall_seconds_estimated=estimated)
        print(f"{init}: {entry['file']} {entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:12]}..., "
              f"{seconds:.0f} s")
        history = final.parent / "history.csv"
        if folder is not None and Path(folder).resolve() != checkpoints.DEFAULT_FOLDER and history.is_file():
            # the stage's training-health log beside its weights (not in the installed package's folder)
            shutil.copyfile(history, Path(folder) / f"{Path(entry['file']).stem}_history.csv")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--embedded", default="multicontrast")
    p.add_argument("--inits", nargs="+", default=list(SHIPPED), choices=SHIPPED)
    p.add_argument("--runs", type=Path, default=None, help="default runs/shipped-PROFILE/EMBEDDED")
    p.add_argument("--reuse", type=Path, default=None, metavar="BUDGET_RUNS",
                   help="scripts/pretraining_budget.py's --runs folder, to reuse its runs at this budget")
    p.add_argument("--from-shipped", action="store_true",
                   help="start local initialisations from the shipped checkpoint of their global stage (hash and "
                        "configuration checked) instead of pre-training that stage again")
    p.add_argument("--export", action="store_true",
                   help="write the finished runs to the checkpoint folder (nothing is trained)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--folder", type=Path, default=None,
                   help="checkpoint folder (default: glcl_core/pretrained for the shipped preset, else "
                        "results/pretrained/EMBEDDED for another cpu preset, "
                        "runs/shipped-PROFILE/EMBEDDED/export otherwise)")
    args = p.parse_args(argv)
    cfg = shipped_config(args.profile, args.embedded)
    runs = args.runs or Path("runs") / f"shipped-{args.profile}" / args.embedded
    if args.export:
        if args.reuse:
            reuse_budget_runs(cfg, runs, args.reuse, args.inits)
        folder = args.folder or default_folder(args.profile, args.embedded)
        folder.mkdir(parents=True, exist_ok=True)
        export_all(cfg, runs, args.inits, args.dtype, folder)
        return
    folder = args.folder or default_folder(args.profile, args.embedded)
    todo = []
    for init in args.inits:  # an exported run is finished even when its run folder is gone (a fresh checkout)
        try:
            checkpoints.shipped_weights(cfg, [init], folder)
            print(f"{init}: already exported to {folder}")
        except checkpoints.CheckpointError:
            todo.append(init)
    run_all(cfg, runs, todo, args.reuse, from_shipped=folder if args.from_shipped else None)


if __name__ == "__main__":
    main()
