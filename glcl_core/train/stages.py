"""Shared pieces of the training stages: StageResult, build_model, a stage's run folder and final checkpoint,
seeding, device wrappers (DDP, compile, autocast), Adam, the optimiser step, the previous stage's weights.

The papers' protocol: global pre-training, local pre-training, low-label fine-tuning, evaluation
(:mod:`glcl_core.train.pretrain`, :mod:`glcl_core.train.finetuning`, :mod:`glcl_core.train.evaluation`).

Data flows one way: volumes -> sampler (CPU) -> batch on the device -> paired views -> model -> head -> loss.
Each stage function returns a :class:`StageResult` with the trained modules and a history table, and (when ``out``
is given) leaves a run folder with ``config.json``, ``history.csv`` and checkpoints. The folder is marked as
glcl_core's (``.glcl_run.json``) and locked while the stage runs; see :mod:`glcl_core.train.run_folder` for which
folders are written, resumed or replaced.

Under ``torchrun`` (:mod:`glcl_core.distributed`) the same functions train data-parallel: each rank draws its part
of the global batch, the trained modules are wrapped in DistributedDataParallel with batch norm over the global
batch, embeddings and metadata are gathered before the loss (masks and loss of the global batch, exact gradients),
and only rank 0 writes the run folder (its ``StageResult.out``; None on the other ranks).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from glcl_core import distributed
from glcl_core.device import autocast_dtype
from glcl_core.models import UNet
from glcl_core.train.checkpoint import load_checkpoint, save_checkpoint
from glcl_core.train.config import RunConfig
from glcl_core.train.run_folder import open_run_dir, prepare_run_dir


@dataclass
class StageResult:
    """What a stage leaves behind."""

    model: UNet
    head: torch.nn.Module | None
    history: Any  # pandas.DataFrame (one row per logged step)
    out: Path | None
    extra: dict[str, Any] = field(default_factory=dict)

    def weights(self) -> dict[str, torch.Tensor]:
        """The U-Net's weights on the CPU (what the next stage loads)."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


# ----------------------------------------------------------------------------------------------- building blocks
def build_model(cfg: RunConfig, n_classes: int | None = None) -> UNet:
    return UNet(
        in_channels=1,
        n_classes=n_classes or cfg.model.n_classes,
        channels=tuple(cfg.model.channels),
        img_size=cfg.data.size,
    )


def _seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weight init, the same on every rank) and return the generator used for
    augmentation (its own stream on each rank; rank 0's is the single-process one)."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1_000_003 + 7_919 * distributed.rank())


def _run_dir(out: str | Path | None, cfg: RunConfig, resume: bool, overwrite: bool,
             stage: str | None = None) -> Path | None:
    """The run folder, prepared by rank 0 only (its errors are raised on every rank); the same path on all ranks.
    Not locked beyond its preparation: the stages use :func:`_run_folder`."""
    if out is None:
        return None
    distributed.run_on_main(lambda: prepare_run_dir(out, cfg, resume, overwrite, stage=stage))
    return Path(out)


@contextlib.contextmanager
def _run_folder(out: str | Path | None, cfg: RunConfig, resume: bool, overwrite: bool,
                stage: str) -> Iterator[Path | None]:
    """The run folder for the duration of a stage: prepared and locked by rank 0 only (its errors are raised on
    every rank; the other ranks never touch the lock, so none waits for it), released when the stage ends, also
    on an exception or Ctrl-C. A fresh run that fails before its first checkpoint leaves no run folder behind
    (:class:`~glcl_core.train.run_folder.RunFolder`)."""
    if out is None:
        yield None
        return
    held = distributed.run_on_main(lambda: open_run_dir(out, cfg, resume, overwrite, stage=stage))
    failed = False
    try:
        yield Path(out)
    except BaseException:
        failed = True
        raise
    finally:
        if held is not None:
            held.close(failed=failed)


def _save_final(out_dir: Path | None, state: dict[str, Any]) -> Path | None:
    """Rank 0 writes ``final.pt``; returns what a rank's :class:`StageResult` reports as ``out`` (None but on 0)."""
    if out_dir is None:
        return None
    if distributed.is_main():
        save_checkpoint(out_dir / "final.pt", state)
    distributed.barrier()  # a rank that reads final.pt next (shared disk) finds it complete
    return out_dir if distributed.is_main() else None


def _prepare(cfg: RunConfig, trained: torch.nn.Module, *others: torch.nn.Module) -> torch.nn.Module:
    """The module a step calls: channels_last (all modules), DDP across ranks (the trained module, with batch norm
    over the global batch), ``torch.compile``, as ``cfg.speed`` asks. In a plain single-process run: ``trained``."""
    if cfg.speed.channels_last:
        for module in (trained, *others):
            module.to(memory_format=torch.channels_last)
    net = distributed.wrap_ddp(trained)
    if cfg.speed.compile:
        net = torch.compile(net)
    return net


def _input(x: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.speed.channels_last else x


def _autocast(device: torch.device):
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _grad_scaler(device: torch.device):
    enabled = device.type == "cuda" and autocast_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=enabled)


def _history_table(rows: list[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame(rows)


def _adam(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the fused kernel where the device supports it: on CPU it cuts the optimiser's share of a
    pre-training step from ~5% to ~1% (benchmarks/train_step.py). Falls back to foreach, then the plain loop."""
    for kwargs in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            continue
    raise AssertionError("unreachable: plain Adam always constructs")


def _optimiser_step(loss: torch.Tensor, optimiser: torch.optim.Optimizer, scaler) -> None:
    optimiser.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimiser)
    scaler.update()


class _ModuleState:
    """Saves a module's parameters in checkpoints (adapter to the engine's state protocol)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)


def _full(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (the loss's precision under autocast); float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _init_state(init: "StageResult | dict | str | Path") -> tuple[dict[str, torch.Tensor], str]:
    """Weights and the stage that produced them ("global", "local", or "model" for a plain state dict)."""
    if isinstance(init, StageResult):
        return init.weights(), init.extra.get("stage", "global")
    if isinstance(init, (str, Path)):
        ckpt = load_checkpoint(init)
        return ckpt["model"], ckpt.get("stage", "model")
    if isinstance(init, dict):
        return init, "model"
    raise TypeError(f"init must be a StageResult, a state dict or a checkpoint path, got {type(init).__name__}")
