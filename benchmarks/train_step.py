"""Training-step throughput: images/s and peak memory for each stage and profile, and the share of a step spent
outside the network's forward/backward (sampling, augmentation, loss, optimiser).

    .venv/bin/python benchmarks/train_step.py                    # ci and cpu profiles on this machine's device
    .venv/bin/python benchmarks/train_step.py --profiles cpu gpu --steps 10

How it is measured. *Step*: the real training function (``pretrain_global``, ``pretrain_local``, ``finetune``) runs
``warm-up + steps`` iterations with a log row per step; the step time is the median of the logged steps after the
warm-up (images per step / images per second). *Floor*: the same modules, on a fixed batch of the same shape already
on the device, forward + backward only (no sampler, no augmentation, no contrastive loss, no optimiser step), best
of a few calls. *Overhead* = 1 - floor / step. Peak memory: CUDA max allocated, or on CPU the rise of the process's
resident high-water mark during the run (see benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_peak_delta_mb, cuda_peak_mb, format_table, time_call  # noqa: E402
from glcl_core.device import default_device  # noqa: E402
from glcl_core.experiment import prepare_split  # noqa: E402
from glcl_core.models import GlobalHead, LocalHead  # noqa: E402
from glcl_core.train import loops  # noqa: E402
from glcl_core.train.config import make_config  # noqa: E402

STAGES = ("global GD", "global PCL", "local LR", "finetune")


def _step_seconds(history, images_per_step: int, warmup: int) -> float:
    rates = list(history["images_per_s"])[warmup:]
    return statistics.median(images_per_step / r for r in rates)


def _run_stage(stage: str, cfg, split, device, warmup: int, steps: int):
    """Run the real stage; returns (seconds per step, images per step)."""
    n = warmup + steps
    if stage.startswith("global"):
        strategy = stage.split()[1]
        cfg = make_config(cfg.profile, global_={"strategy": strategy, "iterations": n, "log_every": 1})
        res = loops.pretrain_global(cfg, split.pool, device=device, progress=False)
        images = 2 * loops._batch_slices(cfg, strategy)
    elif stage.startswith("local"):
        cfg = make_config(cfg.profile, global_={"iterations": 1}, local={"iterations": n, "log_every": 1})
        init = loops.pretrain_global(cfg, split.pool, device=device, progress=False)
        res = loops.pretrain_local(cfg, split.pool, init=init, device=device, progress=False)
        images = 2 * loops._batch_slices(cfg, "LR")
    else:
        cfg = make_config(cfg.profile, finetune={"iterations": n, "log_every": 1, "eval_every": 10**9})
        res = loops.finetune(cfg, split.pool[:2], [], device=device, progress=False)
        images = cfg.finetune.batch_size
    return _step_seconds(res.history, images, warmup), images, cfg


def _floor(stage: str, cfg, device, images: int) -> float:
    """Forward + backward of the stage's modules on a fixed batch already on the device."""
    model = loops.build_model(cfg).to(device).train()
    size = cfg.data.size
    x = torch.randn(images, 1, size, size, device=device)
    if stage.startswith("global"):
        c, h, _ = model.bottleneck_shape
        head = GlobalHead(in_channels=c, spatial=h, mode=cfg.global_.head).to(device)

        def fn():
            head(model.encode(x)[-1]).square().mean().backward()
    elif stage.startswith("local"):
        blocks = cfg.local.decoder_blocks
        head = LocalHead(in_channels=model.decoder_channels(blocks)).to(device)
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        model.encoder.eval()

        def fn():
            with torch.no_grad():
                feats = model.encode(x)
            head(model.decode(feats, n_blocks=blocks)).square().mean().backward()
    else:
        def fn():
            model(x).square().mean().backward()
    return time_call(fn, device, repeats=3)


def _peak_mb(stage: str, cfg, split, device) -> float:
    def fn():
        _run_stage(stage, cfg, split, device, warmup=0, steps=2)
    return cuda_peak_mb(fn, device) if device.type == "cuda" else cpu_peak_delta_mb(fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["ci", "cpu"], choices=["ci", "cpu", "gpu"])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args()
    device = default_device()
    torch.manual_seed(0)
    rows = []
    for profile in args.profiles:
        base = make_config(profile)
        split = prepare_split(base)
        for stage in args.stages:
            step, images, cfg = _run_stage(stage, base, split, device, args.warmup, args.steps)
            floor = _floor(stage, cfg, device, images)
            peak = None if args.no_memory else _peak_mb(stage, base, split, device)
            rows.append([profile, stage, f"{cfg.data.size}px x {images}", f"{step * 1000:.0f}",
                         f"{images / step:.0f}", f"{floor * 1000:.0f}", f"{max(0.0, 1 - floor / step):.1%}",
                         "-" if peak is None else f"{peak:.0f}"])
            print(" | ".join(rows[-1]), flush=True)
    print(f"\ndevice: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(format_table(["profile", "stage", "batch", "step ms", "images/s", "floor ms", "outside network",
                        "peak MB"], rows))


if __name__ == "__main__":
    main()
