"""Cost of data-parallel training on CPU: 2 gloo processes against 1 process at the same global batch.

    .venv/bin/python benchmarks/distributed.py                  # ci and cpu profiles, all stages
    .venv/bin/python benchmarks/distributed.py --profiles ci --steps 4

Two figures per stage, for 1 process and for 2 processes under gloo on the loopback interface (1 thread each):

* *Loss*: the step's loss part alone, forward + backward, on fixed network outputs of the global batch: in one
  process (1 thread, like each rank) the loss of the whole batch; in two, each rank's half gathered (with
  metadata), the loss of the global batch computed on every rank, and the gather's backward (the all-reduce of the
  gradient). Best of ``--repeats`` calls, every call between barriers. The difference is the overhead of making
  the loss "see the negatives of every rank".
* *Step*: the real stage function (``pretrain_global``, ``pretrain_local``, ``finetune``) with a log row per step;
  the best step time after the warm-up; the single process uses all cores (torch's default thread count). The
  2-process step adds DDP's gradient all-reduce and batch norm over the global batch, and runs the network on half
  the batch per process.

Best-of (minimum) times, as benchmarks/common.py, are the figures least disturbed by other processes on a shared
machine; run it on an otherwise idle machine all the same.

On a GPU machine the same stages under NCCL are run with torchrun (see the README); this script measures the CPU
collective path that the CI test checks.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_table  # noqa: E402
from benchmarks.train_step import STAGES, run_stage, stage_config  # noqa: E402
from glcl_core import distributed  # noqa: E402
from glcl_core.batch import Batch  # noqa: E402
from glcl_core.experiment import prepare_split  # noqa: E402
from glcl_core.samplers import LabelledSliceSampler, PartitionSampler, RandomSliceSampler  # noqa: E402
from glcl_core.train import finetuning, pretrain_step, stages  # noqa: E402

WORLD = 2


def _loss_call(stage: str, cfg, split):
    """A zero-argument callable: this rank's share of fixed network outputs -> the stage's loss -> backward,
    through the training loops' own loss functions (gathers included when distributed)."""
    r, w = distributed.rank(), distributed.world_size()
    gen = torch.Generator().manual_seed(0)
    model = stages.build_model(cfg)
    if stage.startswith("global"):
        g = cfg.global_
        sampler = (PartitionSampler(split.pool, g.n_volumes, cfg.data.n_partitions, seed=0)
                   if g.strategy in ("GD-", "GD") else RandomSliceSampler(split.pool, g.batch_size, seed=0))
        batch = sampler.shard(r, w).sample()
        views = Batch.cat([batch, batch])
        z = torch.randn(len(views), 128, generator=gen).requires_grad_(True)

        def call():
            pretrain_step._global_views_loss(lambda _: z, views, cfg).backward()
    elif stage.startswith("local"):
        lc = cfg.local
        batch = RandomSliceSampler(split.pool, lc.batch_size, seed=0).shard(r, w).sample()
        views = Batch.cat([batch, batch])
        h, wd = model.feature_shape(lc.decoder_blocks)
        maps = torch.randn(len(views), model.decoder_channels(lc.decoder_blocks), h, wd, generator=gen)
        maps.requires_grad_(True)
        frozen = SimpleNamespace(encode=lambda _: None)  # the network is not part of the loss figure

        def call():
            pretrain_step._local_views_loss(frozen, lambda _: maps, batch, views, cfg).backward()
    else:
        batch = LabelledSliceSampler(split.pool[:2], cfg.finetune.batch_size, seed=0).shard(r, w).sample()
        logits = torch.randn(len(batch), cfg.model.n_classes, *batch.images.shape[-2:], generator=gen)
        logits.requires_grad_(True)

        def call():
            finetuning.segmentation_loss(logits, batch.labels, cfg.finetune.loss).backward()
    return call


def _best_seconds(fn, repeats: int) -> float:
    """Best of ``repeats`` calls after one warm-up, each between barriers (all ranks call equally often)."""
    fn()
    times = []
    for _ in range(repeats):
        distributed.barrier()
        t0 = time.perf_counter()
        fn()
        distributed.barrier()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(profiles: list[str], stages: list[str], warmup: int, steps: int, repeats: int) -> dict:
    """Loss and step seconds of every (profile, stage) in this process (or process group)."""
    device = torch.device("cpu")
    out = {}
    for profile in profiles:
        with distributed.main_first():
            split = prepare_split(stage_config(stages[0], profile, 1))
        for stage in stages:
            cfg = stage_config(stage, profile, warmup + steps)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # like each rank: the figure is the gather's cost, not thread scaling
            loss = _best_seconds(_loss_call(stage, cfg, split), repeats)
            torch.set_num_threads(threads)
            history, images = run_stage(stage, cfg, split, device)
            rates = list(history["images_per_s"])[warmup:]
            step = min(images / rate for rate in rates)
            out[(profile, stage)] = {"loss": loss, "step": step, "images": images, "size": cfg.data.size}
    return out


def _worker(rank: int, port: int, folder: str, args: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init_distributed()
    try:
        result = measure(**args)
        if distributed.is_main():
            torch.save(result, os.path.join(folder, "result.pt"))
    finally:
        distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["ci", "cpu"], choices=["ci", "cpu"])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="calls per loss timing")
    args = parser.parse_args()
    os.environ.setdefault("GLCL_DEVICE", "cpu")
    kwargs = {"profiles": args.profiles, "stages": args.stages, "warmup": args.warmup, "steps": args.steps,
              "repeats": args.repeats}
    threads = torch.get_num_threads()
    single = measure(**kwargs)
    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.spawn(_worker, args=(_free_port(), folder, kwargs), nprocs=WORLD, join=True)
        multi = torch.load(os.path.join(folder, "result.pt"), weights_only=False)
    rows = []
    for key, one in single.items():
        two = multi[key]
        rows.append([*key, f"{one['size']}px x {one['images']}", f"{one['loss'] * 1e3:.1f}",
                     f"{two['loss'] * 1e3:.1f}", f"{(two['loss'] - one['loss']) * 1e3:+.1f}",
                     f"{one['step'] * 1e3:.0f}", f"{two['step'] * 1e3:.0f}",
                     f"{one['images'] / one['step']:.0f}", f"{two['images'] / two['step']:.0f}",
                     f"{(two['loss'] - one['loss']) / two['step']:+.1%}"])
    print(f"CPU, torch {torch.__version__}; equal global batch; loss: 1 process x 1 thread vs {WORLD} gloo "
          f"processes x 1 thread; step: 1 process x {threads} threads vs {WORLD} x 1")
    print(format_table(["profile", "stage", "global batch", "loss ms (1p)", "gathered loss ms (2p)",
                        "loss overhead ms", "step ms (1p)", "step ms (2p)", "images/s (1p)", "images/s (2p)",
                        "loss overhead / 2p step"], rows))


if __name__ == "__main__":
    main()
