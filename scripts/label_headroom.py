"""Label headroom of an embedded preset, on validation volumes: what twelve labelled volumes give over one, from
random initialisation. Pre-training can only win what labels leave open, so a preset whose headroom is small
cannot show a pre-training effect whatever the method does.

One fine-tuning run per (preset, n_labelled, labelled draw); the validation Dice at every evaluation is appended
to the CSV (finished runs are skipped when the command runs again):

    python scripts/label_headroom.py --profile cpu --embedded multicontrast --n-labelled 1 12 --seeds 0 1 2 \
        --out results/label_headroom_cpu.csv --runs runs/headroom-cpu

``--summary`` prints the headroom table of the CSV (final-step and best validation Dice, mean over draws).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import pandas as pd

from glcl_core.data.split import draw_labelled
from glcl_core.experiment import prepare_split
from glcl_core.train.config import RunConfig, make_config
from glcl_core.train.finetuning import finetune

COLUMNS = ["embedded", "n_labelled", "seed", "iterations", "step", "val_dice", "labelled", "seconds"]


def contrast_of(volume) -> str:
    """The contrast family the generator drew for an embedded volume ('' when it drew none)."""
    root = Path(volume.source).parents[1] if volume.source else None
    if root is None or not (root / "dataset.json").is_file():
        return ""
    subjects = json.loads((root / "dataset.json").read_text()).get("generator", {}).get("subjects", {})
    return subjects.get(volume.name, {}).get("contrast_family", "")


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """The headroom table of the CSV: one row per preset (``glcl_core.analysis.results.label_headroom``)."""
    from glcl_core.analysis.results import label_headroom

    rows = [{"embedded": preset, **label_headroom(group, low=int(group["n_labelled"].min()))}
            for preset, group in table.groupby("embedded")]
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--embedded", nargs="+", default=["multicontrast"])
    p.add_argument("--n-labelled", nargs="+", type=int, default=[1, 12])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--max-seeds-high", type=int, default=1, help="draws for the largest n (12 of 12: one draw)")
    p.add_argument("--out", type=Path, default=Path("results/label_headroom_cpu.csv"))
    p.add_argument("--runs", type=Path, default=Path("runs/headroom-cpu"))
    p.add_argument("--summary", action="store_true")
    args = p.parse_args(argv)
    if args.summary:
        print(summary(pd.read_csv(args.out)).to_string(index=False, float_format="%.3f"))
        return
    done = set()
    if args.out.exists():
        done = {(r["embedded"], int(r["n_labelled"]), int(r["seed"])) for r in csv.DictReader(open(args.out))}
    for preset in args.embedded:
        cfg = make_config(args.profile, data={"embedded": preset})
        split = prepare_split(cfg)
        print(f"{preset}: validation {[(v.name, contrast_of(v)) for v in split.val]}", flush=True)
        for n in args.n_labelled:
            seeds = args.seeds[:args.max_seeds_high] if n == max(args.n_labelled) else args.seeds
            for seed in seeds:
                if (preset, n, seed) in done:
                    continue
                c = RunConfig.from_dict(cfg.to_dict())
                c.seed, c.finetune.n_labelled = seed, n
                labelled = draw_labelled(split.pool, n, seed)
                t0 = time.perf_counter()
                result = finetune(c, labelled, split.val, out=args.runs / preset / f"n{n}_s{seed}", resume=True,
                                  progress=False)
                seconds = time.perf_counter() - t0
                names = " ".join(f"{v.name}:{contrast_of(v)}" for v in labelled)
                rows = [{"embedded": preset, "n_labelled": n, "seed": seed, "iterations": c.finetune.iterations,
                         "step": int(r["step"]), "val_dice": f"{r['val_dice']:.6f}", "labelled": names,
                         "seconds": f"{seconds:.1f}"}
                        for r in result.history.to_dict("records") if r.get("val_dice") == r.get("val_dice")]
                new = not args.out.exists()
                with open(args.out, "a", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=COLUMNS)
                    if new:
                        writer.writeheader()
                    writer.writerows(rows)
                    fh.flush()
                    os.fsync(fh.fileno())
                print(f"{preset} n={n} seed={seed} ({names}): final val Dice {rows[-1]['val_dice']}, "
                      f"best {max(float(r['val_dice']) for r in rows):.3f} ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
