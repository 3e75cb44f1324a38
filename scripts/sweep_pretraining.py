"""Sweep of pre-training settings, judged on validation slices only: end-of-stage health of each variant.

Each (strategy, variant) runs one global stage (and, for local variants, a local stage on top) with the training
pool, measures its health on fixed held-out batches of the validation volumes at every logged step, and appends one
row to the output CSV: the mean of the last three logged steps of loss / chance (training batches and validation
batches), top-1 positive retrieval, effective rank (its minimum over the stage too) and the wall time. Finished rows
are skipped when the command runs again, so an interrupted sweep continues where it stopped.

    python scripts/sweep_pretraining.py --profile cpu --strategies GR --variants glcl glcl-per-image pooled \
        --out results/pretraining_sweep_cpu.csv --runs runs/sweep-cpu
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from glcl_core import augment
from glcl_core.experiment import prepare_split
from glcl_core.train.config import make_config
from glcl_core.train.loops import pretrain_global, pretrain_local

# Views tried in the sweep beside the library's named ones (glcl_core.augment.GLOBAL_AUGMENTATIONS).
EXTRA_AUGMENTATIONS = {
    "no-crop": dataclasses.replace(augment.GlobalAug(), p_crop=0.0, per_batch=False),
}

# name -> overrides per config part. "glcl" is the method as published (GLCL's global stage).
VARIANTS: dict[str, dict] = {
    "glcl": {},
    "glcl-per-image": {"global_": {"augmentation": "glcl-per-image"}},
    "pooled": {"global_": {"head": "pooled"}},
    "pooled-per-image": {"global_": {"head": "pooled", "augmentation": "glcl-per-image"}},
    "no-crop": {"global_": {"augmentation": "no-crop"}},
    "pooled-per-image-lr3e-4": {"global_": {"head": "pooled", "augmentation": "glcl-per-image", "lr": 3e-4}},
    "pooled-per-image-t0.5": {"global_": {"head": "pooled", "augmentation": "glcl-per-image",
                                          "temperature": 0.5}},
}

HEALTH = ["loss_over_chance", "val_loss_over_chance", "retrieval_top1", "effective_rank", "embedding_std"]


def _merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) for k, v in a.items()}
    for part, values in b.items():
        out.setdefault(part, {}).update(values)
    return out


def _summary(history: pd.DataFrame, prefix: str) -> dict:
    tail = history.tail(3)
    row = {f"{prefix}{c}": float(tail[c].mean()) for c in HEALTH if c in history}
    if "effective_rank" in history:
        row[f"{prefix}min_effective_rank"] = float(history["effective_rank"].min())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--strategies", nargs="+", default=["GR"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--local", default=None, help="also run this local strategy (LR or LD) on top")
    p.add_argument("--iterations", type=int, default=None, help="global iterations (default: the profile's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", type=Path, required=True, help="folder for each run's history")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    augment.GLOBAL_AUGMENTATIONS.update(EXTRA_AUGMENTATIONS)
    done = set()
    if args.out.exists():
        old = pd.read_csv(args.out)
        done = set(zip(old["strategy"], old["variant"], old["local"].fillna(""), old["seed"]))
    for strategy in args.strategies:
        for variant in args.variants:
            key = (strategy, variant, args.local or "", args.seed)
            if key in done:
                print("done:", key)
                continue
            overrides = _merge(VARIANTS[variant], {"global_": {"strategy": strategy}})
            if args.iterations:
                overrides["global_"]["iterations"] = args.iterations
            if args.local:
                overrides = _merge(overrides, {"local": {"strategy": args.local}})
            cfg = make_config(args.profile, seed=args.seed, **overrides)
            split = prepare_split(cfg)
            name = f"{strategy}-{variant}" + (f"-{args.local}" if args.local else "") + f"-s{args.seed}"
            t0 = time.perf_counter()
            g = pretrain_global(cfg, split.pool, val=split.val, progress=False)
            row = {"strategy": strategy, "variant": variant, "local": args.local or "", "seed": args.seed,
                   "profile": args.profile, "global_iterations": cfg.global_.iterations,
                   **_summary(g.history, ""), "global_seconds": time.perf_counter() - t0}
            (args.runs / name).mkdir(parents=True, exist_ok=True)
            g.history.to_csv(args.runs / name / "global_history.csv", index=False)
            if args.local:
                t0 = time.perf_counter()
                loc = pretrain_local(cfg, split.pool, init=g, val=split.val, progress=False)
                row.update(_summary(loc.history, "local_"))
                row["local_seconds"] = time.perf_counter() - t0
                loc.history.to_csv(args.runs / name / "local_history.csv", index=False)
            row["overrides"] = json.dumps(VARIANTS[variant], sort_keys=True)
            row["threads"] = args.threads
            row["machine"] = f"{platform.machine()} {torch.get_num_threads()} thread(s)"
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame([row]).to_csv(args.out, mode="a", header=not args.out.exists(), index=False)
            print(pd.DataFrame([row]).round(3).to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
