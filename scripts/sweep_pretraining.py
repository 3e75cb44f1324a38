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
from glcl_core.train.pretrain import pretrain_global, pretrain_local

# Views tried in the sweep beside the library's named ones (glcl_core.augment.GLOBAL_AUGMENTATIONS).
EXTRA_AUGMENTATIONS = {
    "no-crop": dataclasses.replace(augment.GlobalAug(), p_crop=0.0, per_batch=False),
}

# name -> overrides per config part, spelled out in full so that a variant means the same under any profile.
# "glcl" is GLCL's global stage as published (dense g1, one intensity draw per view batch); "pooled-per-image" is
# what the ci and cpu profiles use (glcl_core.train.config.BUDGET_GLOBAL_STAGE).
_GLCL = {"head": "dense", "augmentation": "glcl"}
_BUDGET = {"head": "pooled", "augmentation": "glcl-per-image"}
VARIANTS: dict[str, dict] = {
    "glcl": {"global_": dict(_GLCL)},
    "glcl-per-image": {"global_": {**_GLCL, "augmentation": "glcl-per-image"}},
    "pooled": {"global_": {**_GLCL, "head": "pooled"}},
    "pooled-per-image": {"global_": dict(_BUDGET)},
    "no-crop": {"global_": {**_GLCL, "augmentation": "no-crop"}},
    "pooled-per-image-lr3e-4": {"global_": {**_BUDGET, "lr": 3e-4}},
    "pooled-per-image-t0.5": {"global_": {**_BUDGET, "temperature": 0.5}},
    "pcl-pipeline": {"preset": "pcl"},  # PCL's own head, optimiser, schedule, batch and views
}

# The targets each stage should meet at the end of the cpu profile's budget, on validation slices.
TARGETS = {
    "GR": {"val_loss_over_chance": 0.5, "retrieval_top1": 0.90},
    "GD-": {"val_loss_over_chance": 0.8, "min_effective_rank": 8.0},
    "GD": {"val_loss_over_chance": 0.8, "min_effective_rank": 8.0},
    "PCL": {"val_loss_over_chance": 0.8, "min_effective_rank": 8.0},
    "LR": {"local_val_loss_over_chance": 0.5, "local_retrieval_top1": 0.90},
}


def health_table(sweep: pd.DataFrame, variant: str) -> pd.DataFrame:
    """End-of-stage health of ``variant`` for every global strategy (and each local stage run on top), with the
    targets and whether each is met (loss ratios: at most the target; retrieval and rank: at least)."""
    rows = []
    chosen = sweep[sweep["variant"] == variant]
    for _, r in chosen.iterrows():
        stages = [(r["strategy"], "")] + ([(r["local"], "local_")] if isinstance(r["local"], str) and r["local"]
                                          else [])
        for stage, prefix in stages:
            if prefix == "" and any(x["stage"] == stage for x in rows):
                continue  # the global stage of a run that also ran a local stage: the same as its own row
            steps = (r["global_iterations"] if not prefix
                     else r.get("local_iterations", make_config(r["profile"]).local.iterations))
            row = {"stage": stage if not prefix else f"{r['strategy']} + {stage}", "variant": variant,
                   "seed": r["seed"], "steps": steps}
            for c in ("loss_over_chance", "val_loss_over_chance", "retrieval_top1", "effective_rank",
                      "min_effective_rank", "embedding_std"):
                row[c] = r.get(prefix + c)
            met = []
            for c, level in TARGETS.get(stage, {}).items():
                value = r.get(c)
                ok = value <= level if "loss" in c else value >= level
                met.append(f"{c.replace('local_', '')} {'<=' if 'loss' in c else '>='} {level:g}: "
                           f"{'met' if ok else 'NOT met'} ({value:.3f})")
            row["targets"] = "; ".join(met)
            rows.append(row)
    return pd.DataFrame(rows)


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
    p.add_argument("--runs", type=Path, default=None, help="folder for each run's history")
    p.add_argument("--health", type=Path, default=None,
                   help="only write the health table of --chosen from the sweep CSV --out to this file")
    p.add_argument("--chosen", default="pooled-per-image", help="the variant the profile uses")
    args = p.parse_args()
    if args.health:
        table = health_table(pd.read_csv(args.out), args.chosen)
        table.to_csv(args.health, index=False)
        print(table.round(3).to_string(index=False))
        return
    if args.runs is None:
        p.error("--runs is required for a sweep")
    torch.set_num_threads(args.threads)
    augment.GLOBAL_AUGMENTATIONS.update(EXTRA_AUGMENTATIONS)
    done = set()
    if args.out.exists():
        old = pd.read_csv(args.out)
        done = set(zip(old["strategy"], old["variant"], old["local"].astype(str).replace("nan", ""), old["seed"]))
    for strategy in args.strategies:
        for variant in args.variants:
            key = (strategy, variant, args.local or "", args.seed)
            if key in done:
                print("done:", key)
                continue
            variant_overrides = dict(VARIANTS[variant])
            preset = variant_overrides.pop("preset", None)
            overrides = _merge(variant_overrides, {"global_": {"strategy": strategy}})
            if args.iterations:
                overrides["global_"]["iterations"] = args.iterations
            if args.local:
                overrides = _merge(overrides, {"local": {"strategy": args.local}})
            cfg = make_config(args.profile, seed=args.seed, preset=preset, **overrides)
            split = prepare_split(cfg)
            name = f"{strategy}-{variant}" + (f"-{args.local}" if args.local else "") + f"-s{args.seed}"
            t0 = time.perf_counter()
            g = pretrain_global(cfg, split.pool, val=split.val, progress=False)
            row = {"strategy": strategy, "variant": variant, "local": args.local or "", "seed": args.seed,
                   "profile": args.profile, "global_iterations": cfg.global_.iterations,
                   **_summary(g.history, ""), "global_seconds": time.perf_counter() - t0}
            (args.runs / name).mkdir(parents=True, exist_ok=True)
            g.history.to_csv(args.runs / name / "global_history.csv", index=False)
            torch.save({"model": g.model.state_dict(), "head": g.head.state_dict(), "config": cfg.to_dict()},
                       args.runs / name / "global.pt")
            if args.local:
                t0 = time.perf_counter()
                loc = pretrain_local(cfg, split.pool, init=g, val=split.val, progress=False)
                row.update(_summary(loc.history, "local_"))
                row["local_iterations"] = cfg.local.iterations
                row["local_seconds"] = time.perf_counter() - t0
                loc.history.to_csv(args.runs / name / "local_history.csv", index=False)
            row["overrides"] = json.dumps(VARIANTS[variant], sort_keys=True)
            row["threads"] = args.threads
            row["machine"] = f"{platform.machine()} {torch.get_num_threads()} thread(s)"
            args.out.parent.mkdir(parents=True, exist_ok=True)
            table = pd.DataFrame([row])
            if args.out.exists():  # rewrite: rows with and without a local stage have different columns
                table = pd.concat([pd.read_csv(args.out), table], ignore_index=True)
            table.to_csv(args.out, index=False)
            print(pd.DataFrame([row]).round(3).to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
