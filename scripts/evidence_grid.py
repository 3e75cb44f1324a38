"""The test-set grids of the label-efficiency study, in priority order, from given pre-trained weights.

Three views of one question on one embedded preset, all from the long-budget pre-training
(``make_config(profile, budget="long")``) and scored on the test volumes once every choice is fixed:

* ``finetune``: label efficiency, fine-tuning Dice at 1, 2, 4, 8 and 12 labelled volumes;
* ``probe``: the frozen-representation probe (``FinetuneConfig.freeze``) at 1, 2 and 4 labelled volumes;
* the head start is read from the ``finetune`` grid's validation curves
  (``glcl_core.analysis.results.validation_curves``).

The weights come from a checkpoint folder with a manifest (``glcl_core/pretrained`` for the shipped preset, or
``results/pretrained/PRESET`` for another cpu preset; both written by ``scripts/pretrain_shipped.py --export``) and are
matched to the grid's configuration by ``glcl_core.checkpoints.shipped_weights``; initialisations without a
checkpoint yet are skipped and named. Cells run in the order of ``PLAN`` (the claim's cells first) and finished
cells are skipped, so the command is simply repeated until everything is done:

    python scripts/evidence_grid.py --profile cpu --embedded multicontrast
    python scripts/evidence_grid.py --profile cpu --embedded multicontrast --summary   # CSVs and figures
    python scripts/evidence_grid.py --profile cpu --embedded standard --status         # what is left

The grid folders (default ``results/grids/PROFILE-PRESET``) keep only text: every scored cell's row in
``results.csv`` and its validation history, not its weights. Committing the folder therefore carries a partly
finished grid to another checkout, where the same command goes on with the cells still missing.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd

from glcl_core import checkpoints
from glcl_core.experiment import finished_cells, run_experiment
from glcl_core.train.config import RunConfig, make_config
from glcl_core.train.run_folder import config_differences
from pretrain_shipped import default_folder  # scripts/ is on the path when this file is run

MAIN = ["random", "GR", "GD", "PCL", "GD+LR"]  # the label-efficiency curves
OTHERS = ["GD-", "GD+LD", "PCL+LR"]  # the rest of the full grid
SEEDS = [0, 1, 2]
ALL_LABELLED = 12  # the whole labelled pool: the label headroom is 1 vs this
# (grid, initialisations, labelled volumes): the claim (1 and 2 labelled volumes) first, the tails last
PLAN = [
    ("finetune", MAIN, [1, 2]),
    ("probe", MAIN, [1]),
    ("finetune", OTHERS, [1, 2]),
    ("finetune", MAIN + OTHERS, [4]),
    ("probe", MAIN, [2, 4]),
    ("finetune", MAIN, [8, ALL_LABELLED]),
]


def default_grid_folder(profile: str, embedded: str) -> Path:
    """Where the grids of one profile and preset live: committed text files, so an unfinished grid resumes anywhere."""
    return Path("results") / "grids" / f"{profile}-{embedded}"


def grid_config(profile: str, embedded: str, grid: str) -> RunConfig:
    return make_config(profile, seed=0, budget="long", data={"embedded": embedded},
                       finetune={"freeze": grid == "probe"}, speed={"channels_last": True})


def available_weights(cfg: RunConfig, inits, folder: Path) -> tuple[dict[str, Path], list[str]]:
    found, missing = {}, []
    for init in inits:
        if init == "random":
            continue
        try:
            found.update(checkpoints.shipped_weights(cfg, [init], folder))
        except checkpoints.CheckpointError as err:
            missing.append(f"{init} ({err})")
    return found, missing


def run_plan(profile: str, embedded: str, out: Path, folder: Path, steps: list[int] | None = None,
             only: list[str] | None = None, seeds: list[int] = SEEDS, shared: bool = False) -> None:
    for index, (grid, inits, n_labelled) in enumerate(PLAN):
        inits = [i for i in inits if only is None or i in only]
        if (steps and index not in steps) or not inits:
            continue
        cfg = grid_config(profile, embedded, grid)
        weights, missing = available_weights(cfg, inits, folder)
        ready = [i for i in inits if i == "random" or i in weights]
        for line in missing:
            print(f"[{grid}] waiting for {line}")
        if ready:
            print(f"[{grid}] {ready} x n {n_labelled} x seeds {seeds}")
            run_experiment(cfg, out / grid, inits=ready, n_labelled=n_labelled, seeds=seeds, progress=False,
                           pretrained=weights, keep_weights=False, shared=shared)


def plan_status(profile: str, embedded: str, out: Path, folder: Path, only: list[str] | None = None,
                seeds: list[int] = SEEDS) -> pd.DataFrame:
    """Per PLAN entry and initialisation: cells finished / planned, and whether its weights are there (reads only
    the grid folders' results.csv and the checkpoint manifest; trains nothing)."""

    rows = []
    for index, (grid, inits, n_labelled) in enumerate(PLAN):
        cfg = grid_config(profile, embedded, grid)
        done = finished_cells(out / grid / "results.csv")
        for init in inits:
            if only is not None and init not in only:
                continue
            ready = init == "random" or not available_weights(cfg, [init], folder)[1]
            finished = sum((init, n, s) in done for n in n_labelled for s in seeds)
            rows.append({"entry": index, "grid": grid, "init": init, "n_labelled": " ".join(map(str, n_labelled)),
                         "finished": finished, "planned": len(n_labelled) * len(seeds), "weights": ready})
    return pd.DataFrame(rows)


def _replace_preset_rows(path: Path, embedded: str, table: pd.DataFrame) -> None:
    """Write ``table`` (this preset's rows, column ``embedded`` first) into ``path``, keeping other presets' rows."""
    table = table.assign(embedded=embedded)[["embedded", *table.columns]]
    if path.exists():
        kept = pd.read_csv(path)
        table = pd.concat([kept[kept["embedded"] != embedded], table], ignore_index=True)
    table.to_csv(path, index=False, float_format="%.6g")


def _refuse_other_grid(kept_spec: Path, grid_spec: Path) -> None:
    """Stop before a grid's rows replace those of another grid kept under the same name in ``results/`` (e.g. an
    earlier, shorter pre-training budget that a chapter still reads): the user moves or renames that file first."""
    if not kept_spec.exists():
        return
    kept, ours = (json.loads(p.read_text())["config"] for p in (kept_spec, grid_spec))
    # settings added to the configuration since that file was written are not a conflict
    differ = [d for d in config_differences(kept, ours) if ": '(unset)' -> " not in d]
    if differ:
        shown = "; ".join(differ[:4]) + (" ..." if len(differ) > 4 else "")
        raise SystemExit(f"{kept_spec.with_suffix('.csv')} holds another grid ({kept_spec.name} -> {grid_spec}: "
                         f"{shown}); nothing was written. Move or rename those two files, then summarise again.")


def write_summary(out: Path, embedded: str, results_dir: Path, profile: str = "cpu") -> list[Path]:
    """The study's tables and figures from the grid folders under ``out`` (whatever cells are finished):

    * ``low_label_{profile}.csv`` (shipped preset) or ``low_label_{profile}_{embedded}.csv``: the fine-tuning grid's
      rows (method, strategy, n_labelled, seed, volume, class, dice), its ``experiment.json`` beside it (``.json``);
    * ``label_efficiency_{profile}.csv`` and ``frozen_probe_{profile}.csv``: per preset, initialisation and labelled
      count the mean +- sd over seeds and the paired difference to random init with its 95 % interval;
    * ``head_start_{profile}.csv``: validation Dice against fine-tuning step, mean and sd over seeds, 1 labelled volume;
    * ``label_headroom_grid_{profile}.csv``: the label headroom (random init, validation, 12 vs 1 labelled volumes,
      ``glcl_core.analysis.results.label_headroom``) of the grid's own runs, once every seed of both counts is
      finished (curves and head start read finished cells only);
    * ``figures/{label_efficiency,frozen_probe,head_start}_{profile}_{embedded}.png``.
    """
    from glcl_core.analysis import results
    from glcl_core.viz import segmentation as seg

    written: list[Path] = []
    figures = results_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    grid, probe = out / "finetune", out / "probe"
    shipped = embedded == checkpoints.SHIPPED_EMBEDDED
    if (grid / "results.csv").exists():
        table = results.load_results(grid / "results.csv")
        stem = f"low_label_{profile}" if shipped else f"low_label_{profile}_{embedded}"
        _refuse_other_grid(results_dir / f"{stem}.json", grid / "experiment.json")
        table.to_csv(results_dir / f"{stem}.csv", index=False)
        shutil.copyfile(grid / "experiment.json", results_dir / f"{stem}.json")
        efficiency = results.label_efficiency(table)
        _replace_preset_rows(results_dir / f"label_efficiency_{profile}.csv", embedded, efficiency)
        fig = seg.plot_label_efficiency(efficiency[efficiency["strategy"].isin(MAIN)],
                                        title=f"Label efficiency, {embedded} preset (fine-tuned, test volumes)")
        fig.savefig(figures / f"label_efficiency_{profile}_{embedded}.png", dpi=120)
        # validation curves of finished cells only (a cell still running has a partial history.csv)
        done = finished_cells(grid / "results.csv")
        all_curves = results.validation_curves(grid)
        keep = [(s, int(n), int(d)) in done for s, n, d in
                zip(all_curves["strategy"], all_curves["n_labelled"], all_curves["seed"])]
        all_curves = all_curves[keep]
        curves = results.curve_summary(all_curves)
        curves = curves[curves["n_labelled"] == 1]
        _replace_preset_rows(results_dir / f"head_start_{profile}.csv", embedded, curves)
        fig = seg.plot_validation_curves(curves[curves["strategy"].isin(MAIN)],
                                         title=f"Head start, {embedded} preset, 1 labelled volume")
        fig.savefig(figures / f"head_start_{profile}_{embedded}.png", dpi=120)
        random_curves = all_curves[all_curves["strategy"] == "random"]
        runs = random_curves.groupby("n_labelled")["seed"].nunique()
        if all(runs.get(n, 0) == len(SEEDS) for n in (1, ALL_LABELLED)):  # every draw of both counts finished
            headroom = results.label_headroom(random_curves, low=1, high=ALL_LABELLED)
            _replace_preset_rows(results_dir / f"label_headroom_grid_{profile}.csv", embedded,
                                 pd.DataFrame([headroom]))
            written.append(results_dir / f"label_headroom_grid_{profile}.csv")
        written += [results_dir / f"{stem}.csv", figures / f"label_efficiency_{profile}_{embedded}.png",
                    figures / f"head_start_{profile}_{embedded}.png"]
    if (probe / "results.csv").exists():
        table = results.load_results(probe / "results.csv")
        _replace_preset_rows(results_dir / f"frozen_probe_{profile}.csv", embedded, results.label_efficiency(table))
        fig = seg.plot_dice(results.summary_table(table),
                            title=f"Frozen-encoder probe, {embedded} preset (test volumes)")
        fig.savefig(figures / f"frozen_probe_{profile}_{embedded}.png", dpi=120)
        written.append(figures / f"frozen_probe_{profile}_{embedded}.png")
    for path in written:
        print(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--embedded", default="multicontrast")
    p.add_argument("--out", type=Path, default=None, help="default results/grids/PROFILE-EMBEDDED")
    p.add_argument("--folder", type=Path, default=None, help="checkpoint folder (default: see module docstring)")
    p.add_argument("--steps", nargs="+", type=int, default=None, help="only these entries of PLAN (0-based)")
    p.add_argument("--inits", nargs="+", default=None,
                   help="only these initialisations (a grid folder takes one process at a time, or --shared)")
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS, help="labelled draws (default 0 1 2)")
    p.add_argument("--summary", action="store_true", help="write the result tables and figures instead")
    p.add_argument("--status", action="store_true", help="print what is finished and what waits for weights")
    p.add_argument("--shared", action="store_true",
                   help="work through the grids together with other processes started with --shared (one per core "
                        "or GPU): each takes the cells no other one is running")
    args = p.parse_args(argv)
    out = args.out or default_grid_folder(args.profile, args.embedded)
    if args.summary:
        write_summary(out, args.embedded, Path("results"), profile=args.profile)
        return
    folder = args.folder or default_folder(args.profile, args.embedded)
    if args.status:
        status = plan_status(args.profile, args.embedded, out, folder, args.inits, args.seeds)
        print(status.to_string(index=False))
        print(f"{int(status['finished'].sum())} of {int(status['planned'].sum())} cells finished in {out}")
        return
    print(f"weights from {folder}")
    run_plan(args.profile, args.embedded, out, folder, args.steps, args.inits, args.seeds, shared=args.shared)


if __name__ == "__main__":
    main()
