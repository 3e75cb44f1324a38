"""Training-step throughput: images/s and peak memory for each stage and profile, and the share of a step spent
outside the network's forward/backward (sampling, augmentation, loss, optimiser).

    .venv/bin/python benchmarks/train_step.py                 # this machine's device: gpu profile on CUDA, else ci, cpu
    .venv/bin/python benchmarks/train_step.py --profiles cpu gpu --steps 10
    .venv/bin/python benchmarks/train_step.py --profiles gpu --channels-last --compile   # GPU speed options

How it is measured. *Step*: the real training function (``pretrain_global``, ``pretrain_local``, ``finetune``) runs
``warm-up + steps`` iterations with a log row per step; the step time is the median of the logged steps after the
warm-up (images per step / images per second). *Floor*: the same modules, on a fixed batch of the same shape already
on the device, forward + backward only (no sampler, no augmentation, no contrastive loss, no optimiser step), the
median of as many calls as there are timed steps (the same statistic as the step, so noise does not pass for
overhead), with the same ``--channels-last`` / ``--compile`` settings as the step (and the same mixed precision).
*Overhead* = 1 - floor / step. Peak memory: CUDA max allocated, or on CPU the rise of the process's
resident high-water mark during the run (see benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_peak_delta_mb, cuda_peak_mb, format_table, time_call  # noqa: E402
from glcl_core.device import autocast_dtype, default_device  # noqa: E402
from glcl_core.experiment import prepare_split  # noqa: E402
from glcl_core.models import GlobalHead  # noqa: E402
from glcl_core.train import finetuning, pretrain, pretrain_step, stages  # noqa: E402
from glcl_core.train.config import make_config  # noqa: E402

STAGES = ("global GD", "global PCL", "local LR", "finetune")


def _step_seconds(history, images_per_step: int, warmup: int) -> float:
    rates = list(history["images_per_s"])[warmup:]
    return statistics.median(images_per_step / r for r in rates)


def stage_config(stage: str, profile: str, iterations: int, speed: dict | None = None):
    """The configuration a stage runs with here: ``iterations`` steps, a log row per step, no validation."""
    speed = speed or {}
    if stage.startswith("global"):
        return make_config(profile, speed=speed,
                           global_={"strategy": stage.split()[1], "iterations": iterations, "log_every": 1})
    if stage.startswith("local"):
        return make_config(profile, speed=speed, global_={"iterations": 1},
                           local={"iterations": iterations, "log_every": 1})
    return make_config(profile, speed=speed, finetune={"iterations": iterations, "log_every": 1, "eval_every": 10**9})


def run_stage(stage: str, cfg, split, device) -> tuple[list[dict], int]:
    """Run the real stage function with ``cfg`` (from :func:`stage_config`); returns (history rows, images/step)."""
    if stage.startswith("global"):
        res = pretrain.pretrain_global(cfg, split.pool, device=device, progress=False)
        images = 2 * pretrain._batch_slices(cfg, cfg.global_.strategy)
    elif stage.startswith("local"):
        init = pretrain.pretrain_global(cfg, split.pool, device=device, progress=False)
        res = pretrain.pretrain_local(cfg, split.pool, init=init, device=device, progress=False)
        images = 2 * pretrain._batch_slices(cfg, "LR")
    else:
        res = finetuning.finetune(cfg, split.pool[:2], [], device=device, progress=False)
        images = cfg.finetune.batch_size
    return res.history, images


def _run_stage(stage: str, cfg, split, device, warmup: int, steps: int):
    """Run the real stage; returns (seconds per step, images per step, config)."""
    cfg = stage_config(stage, cfg.profile, warmup + steps, dataclasses.asdict(cfg.speed))
    history, images = run_stage(stage, cfg, split, device)
    return _step_seconds(history, images, warmup), images, cfg


def _floor(stage: str, cfg, device, images: int, repeats: int = 10) -> float:
    """Forward + backward of the stage's modules on a fixed batch already on the device, prepared as the stage
    prepares them (channels_last, torch.compile)."""
    model = stages.build_model(cfg).to(device).train()
    size = cfg.data.size
    x = stages._input(torch.randn(images, 1, size, size, device=device), cfg)
    if stage.startswith("global"):
        c, h, _ = model.bottleneck_shape
        head = GlobalHead(in_channels=c, spatial=h, mode=cfg.global_.head).to(device)
        net = stages._prepare(cfg, pretrain_step._GlobalEmbedder(model, head), model)

        def fn():
            with stages._autocast(device):
                out = net(x)
            out.float().square().mean().backward()
    elif stage.startswith("local"):
        blocks = cfg.local.decoder_blocks
        head = pretrain.build_local_head(cfg, model, blocks).to(device)
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        model.encoder.eval()
        net = stages._prepare(cfg, pretrain_step._LocalMaps(model, head, blocks), model)

        def fn():
            with torch.no_grad(), stages._autocast(device):
                feats = model.encode(x)
            with stages._autocast(device):
                out = net(feats)
            out.float().square().mean().backward()
    else:
        net = stages._prepare(cfg, model)

        def fn():
            with stages._autocast(device):
                out = net(x)
            out.float().square().mean().backward()
    return time_call(fn, device, repeats=repeats, reduce="median")


def _peak_mb(stage: str, cfg, split, device) -> float:
    def fn():
        _run_stage(stage, cfg, split, device, warmup=0, steps=2)
    return cuda_peak_mb(fn, device) if device.type == "cuda" else cpu_peak_delta_mb(fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=None, choices=["ci", "cpu", "gpu"],
                        help="default: gpu on a CUDA device, else ci and cpu")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--channels-last", action="store_true", help="NHWC layout for network and inputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained modules")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    if args.profiles is None:
        args.profiles = ["gpu"] if device.type == "cuda" else ["ci", "cpu"]
    speed = {"channels_last": args.channels_last, "compile": args.compile}
    torch.manual_seed(0)
    rows = []
    for profile in args.profiles:
        base = make_config(profile, speed=speed)
        split = prepare_split(base)
        for stage in args.stages:
            step, images, cfg = _run_stage(stage, base, split, device, args.warmup, args.steps)
            floor = _floor(stage, cfg, device, images, repeats=args.steps)
            peak = None if args.no_memory else _peak_mb(stage, base, split, device)
            rows.append([profile, stage, f"{cfg.data.size}px x {images}", f"{step * 1000:.0f}",
                         f"{images / step:.0f}", f"{floor * 1000:.0f}", f"{images / floor:.0f}",
                         f"{max(0.0, 1 - floor / step):.1%}", "-" if peak is None else f"{peak:.0f}"])
            print(" | ".join(rows[-1]), flush=True)
    precision = autocast_dtype(device)
    print(f"\ndevice: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"autocast {precision or 'off (fp32)'}, channels_last {args.channels_last}, compile {args.compile}")
    print(format_table(["profile", "stage", "batch", "step ms", "images/s", "floor ms", "floor images/s",
                        "outside network", "peak MB"], rows))


if __name__ == "__main__":
    main()
