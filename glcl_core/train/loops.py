"""The papers' protocol: global pre-training, local pre-training, low-label fine-tuning, evaluation.

Data flows one way: volumes -> sampler (CPU) -> batch on the device -> paired views -> model -> head -> loss.
Each stage function returns a :class:`StageResult` with the trained modules and a history table, and (when ``out``
is given) leaves a run folder with ``config.json``, ``history.csv`` and checkpoints. The folder is marked as
glcl_core's (``.glcl_run.json``) and locked while the stage runs; see :mod:`glcl_core.train.checkpoint` for which
folders are written, resumed or replaced.

Under ``torchrun`` (:mod:`glcl_core.distributed`) the same functions train data-parallel: each rank draws its part
of the global batch, the trained modules are wrapped in DistributedDataParallel with batch norm over the global
batch, embeddings and metadata are gathered before the loss (masks and loss of the global batch, exact gradients),
and only rank 0 writes the run folder (its ``StageResult.out``; None on the other ranks).
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from glcl_core import distributed
from glcl_core.augment import augment_pair, global_augmentation, make_views
from glcl_core.batch import Batch
from glcl_core.data.preprocess import scores_to_native
from glcl_core.data.volume import Volume
from glcl_core.device import autocast_dtype, default_device
from glcl_core.models import GlobalHead, LocalHead, UNet, load_pretrained
from glcl_core.samplers import LabelledSliceSampler, PartitionSampler, RandomSliceSampler
from glcl_core.contrastive.health import chance_level
from glcl_core.losses import masked_info_nce
from glcl_core.strategies import GLOBAL_REDUCTION, global_masks, local_loss
from glcl_core.train.monitor import CollapseWatch, GlobalMonitor, LocalMonitor
from glcl_core.train.checkpoint import load_checkpoint, open_run_dir, prepare_run_dir, save_checkpoint
from glcl_core.train.config import GLOBAL_STRATEGIES, LOCAL_STRATEGIES, GlobalConfig, LocalConfig, RunConfig
from glcl_core.train.engine import GeneratorState, run_loop


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
    (:class:`~glcl_core.train.checkpoint.RunFolder`)."""
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


class _GlobalEmbedder(torch.nn.Module):
    """g1(encoder(x)): the modules global pre-training trains, as one module (DDP sees only these parameters)."""

    def __init__(self, model: UNet, head: torch.nn.Module):
        super().__init__()
        self.encoder, self.head = model.encoder, head
        self._encode = model.encode  # input checks, then self.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._encode(x)[-1])


class _LocalMaps(torch.nn.Module):
    """g2(first decoder blocks(features)): the modules local pre-training trains, as one module."""

    def __init__(self, model: UNet, head: torch.nn.Module, n_blocks: int):
        super().__init__()
        self.blocks, self.head, self.n_blocks = model.decoder[:n_blocks], head, n_blocks
        self._decode = model.decode  # runs self.blocks

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self._decode(features, n_blocks=self.n_blocks))


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


OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")


def _global_optimiser(params: list[torch.nn.Parameter], g: GlobalConfig) -> torch.optim.Optimizer:
    """The global stage's optimiser: ``g.optimizer`` ``"adam"`` (GLCL's code: Adam, lr 1e-3) or ``"sgd"`` (PCL's
    code: SGD, momentum 0.9, weight decay 1e-5 on every parameter, no Nesterov), with ``g.lr`` and
    ``g.weight_decay`` (Adam: added to the gradient, as torch's Adam does)."""
    if g.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {g.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if g.optimizer == "adam":
        return _adam(params, g.lr, g.weight_decay)
    return torch.optim.SGD(params, lr=g.lr, momentum=g.momentum, weight_decay=g.weight_decay)


class LRFactor:
    """The factor on the base lr at step ``t`` (0-based, the step the lr is used for) of a stage of ``iterations``:
    ``"constant"``: 1; ``"cosine"``: ``(1 + cos(pi * t / iterations)) / 2`` (PCL's ``LR_Scheduler`` in ``"cos"``
    mode, with ``iterations`` = epochs x batches per epoch there: 1 at the first step, never 0). With ``warmup``
    ``> 0`` the factor is also multiplied by ``(t + 1) / warmup`` for ``t < warmup`` (ours; PCL's scheduler
    multiplies by ``t / warmup``, its code leaves warm-up off). A plain object, so a checkpoint keeps it."""

    def __init__(self, schedule: str, iterations: int, warmup: int = 0):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if int(warmup) < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {warmup}")
        self.schedule, self.iterations, self.warmup = schedule, max(int(iterations), 1), int(warmup)

    def __call__(self, t: int) -> float:
        factor = 1.0
        if self.schedule == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * t / self.iterations))
        if t < self.warmup:
            factor *= (t + 1) / self.warmup
        return factor


def _lr_schedule(optimiser: torch.optim.Optimizer, g: GlobalConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``g.schedule`` over the stage's ``g.iterations``: call ``.step()`` after every optimiser step; its
    ``state_dict`` goes into the checkpoints, so a resumed run continues the same lr sequence."""
    return torch.optim.lr_scheduler.LambdaLR(optimiser, LRFactor(g.schedule, g.iterations, g.warmup))


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


# ----------------------------------------------------------------------------------------------- stage 1: global
def _contrastive_sampler(volumes: list[Volume], cfg: RunConfig, by_partition: bool, n_volumes: int,
                         batch_size: int) -> "PartitionSampler | RandomSliceSampler":
    """This rank's share of a pre-training batch: ``n_volumes`` x S partitions (GD-, GD, LD) or random slices."""
    if by_partition:
        sampler = PartitionSampler(volumes, n_volumes=n_volumes, n_partitions=cfg.data.n_partitions, seed=cfg.seed)
    else:
        sampler = RandomSliceSampler(volumes, batch_size=batch_size, seed=cfg.seed,
                                     n_partitions=cfg.data.n_partitions)
    sampler.shard(distributed.rank(), distributed.world_size())
    return sampler


def _run_contrastive_stage(stage: str, stage_cfg: "GlobalConfig | LocalConfig", cfg: RunConfig, step,
                           model: UNet, head: torch.nn.Module, optimiser: torch.optim.Optimizer, sampler,
                           aug_gen: torch.Generator, out_dir: Path | None, resume: bool,
                           progress: bool | str | None, extra_state: dict[str, Any] | None = None) -> StageResult:
    """The loop, the final checkpoint and the result, shared by the global and the local stage.

    ``extra_state``: more objects whose state a checkpoint keeps (e.g. an LR schedule, the collapse watch)."""
    result = run_loop(
        step,
        {"model": _ModuleState(model), "head": _ModuleState(head), "optimiser": optimiser,
         "sampler": sampler, "augment": GeneratorState(aug_gen), **(extra_state or {})},
        iterations=stage_cfg.iterations, out=out_dir, resume=resume, checkpoint_every=stage_cfg.checkpoint_every,
        log_every=stage_cfg.log_every, images_per_step=2 * _batch_slices(cfg, stage_cfg.strategy),
        desc=f"{stage} {stage_cfg.strategy}", progress=progress,
    )
    out_dir = _save_final(out_dir, {"model": model.state_dict(), "head": head.state_dict(),
                                    "stage": stage, "strategy": stage_cfg.strategy})
    return StageResult(model, head, _history_table(result.history), out_dir,
                       {"seconds": result.seconds, "stage": stage})


def pretrain_global(
    cfg: RunConfig,
    volumes: list[Volume],
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    progress: bool | str | None = None,
    val: list[Volume] | None = None,
) -> StageResult:
    """Pre-train the encoder and the global head g1 with ``cfg.global_.strategy`` (GR, GD-, GD or PCL).

    Volumes need no labels. Batches: GR and PCL draw ``batch_size`` random slices; GD- and GD draw
    ``n_volumes`` x S partitions (one slice per partition); each slice gives two views
    (``cfg.global_.augmentation``).

    Optimiser and lr: ``cfg.global_.optimizer`` (default Adam, GLCL's; ``"sgd"`` for PCL's) and ``schedule``
    (default constant, GLCL's; ``"cosine"`` over the stage's iterations, PCL's), see :class:`LRFactor`. The
    schedule's state is checkpointed, so a resumed run follows the same lr sequence. g1: ``head``, ``head_hidden``,
    ``head_dim`` (:class:`~glcl_core.models.GlobalHead`).

    Health (columns of the history, at every logged step): ``loss_over_chance`` (this batch's loss over the loss of
    identical embeddings under the same masks), and on fixed held-out batches of ``val`` (the validation volumes;
    the training volumes if ``val`` is None) ``val_loss_over_chance``, ``retrieval_top1``, ``effective_rank`` and
    ``embedding_std`` (:mod:`glcl_core.contrastive.health`). A stage that looks collapsed prints one warning line.
    ``progress="lines"`` prints one line per logged step instead of a progress bar (the command line's choice
    when it does not run in a terminal).
    """
    g = cfg.global_
    if g.strategy not in GLOBAL_STRATEGIES:
        raise ValueError(f"unknown global strategy {g.strategy!r}; choose one of {', '.join(GLOBAL_STRATEGIES)}")
    device = torch.device(device) if device is not None else default_device()
    with _run_folder(out, cfg, resume, overwrite, "global") as out_dir:
        return _pretrain_global(cfg, volumes, out_dir, resume, device, progress, val)


def _pretrain_global(cfg: RunConfig, volumes: list[Volume], out_dir: Path | None, resume: bool,
                     device: torch.device, progress: bool | str | None, val: list[Volume] | None) -> StageResult:
    g = cfg.global_
    aug_gen = _seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    c, h, w = model.bottleneck_shape
    head = GlobalHead(in_channels=c, spatial=(h, w), mode=g.head, hidden=g.head_hidden, out_dim=g.head_dim).to(device)
    sampler = _contrastive_sampler(volumes, cfg, by_partition=g.strategy in ("GD-", "GD"),
                                   n_volumes=g.n_volumes, batch_size=g.batch_size)
    embed = _prepare(cfg, _GlobalEmbedder(model, head), model)
    params = list(model.encoder.parameters()) + list(head.parameters())
    optimiser = _global_optimiser(params, g)
    schedule = _lr_schedule(optimiser, g)
    scaler = _grad_scaler(device)
    view_params = global_augmentation(g.augmentation)
    monitor = GlobalMonitor(val or volumes, cfg, lambda views: _global_masks(views, cfg),
                            GLOBAL_REDUCTION[g.strategy], device)
    watch = CollapseWatch(f"global {g.strategy}", _logged_steps(g))
    model.train()
    head.train()

    def step(i: int) -> dict[str, float]:
        batch = sampler.sample().to(device, non_blocking=True)
        views = make_views(batch, aug_gen, stage="global", params=view_params)
        stats: dict[str, float] = {}
        loss = _global_views_loss(embed, views, cfg, stats)
        _optimiser_step(loss, optimiser, scaler)
        schedule.step()  # the lr of step i + 1
        metrics = {"loss": loss.item(), "loss_over_chance": loss.item() / stats["chance"]}
        if _is_logged(i, g):
            metrics.update(monitor.measure(embed, model, head))
            watch.update(i + 1, metrics)
        return metrics

    return _run_contrastive_stage("global", g, cfg, step, model, head, optimiser, sampler, aug_gen,
                                  out_dir, resume, progress, extra_state={"health": watch, "schedule": schedule})


def _full(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (the loss's precision under autocast); float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _logged_steps(stage_cfg: "GlobalConfig | LocalConfig") -> int:
    """How many steps of a stage the loop logs (every ``log_every`` and the last)."""
    return stage_cfg.iterations // stage_cfg.log_every + int(stage_cfg.iterations % stage_cfg.log_every != 0)


def _is_logged(i: int, stage_cfg: "GlobalConfig | LocalConfig") -> bool:
    return (i + 1) % stage_cfg.log_every == 0 or i + 1 == stage_cfg.iterations


def _global_masks(meta: "Batch | dict", cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, N)`` positive and negative masks of ``cfg.global_``'s strategy for a batch of views (or metadata)."""
    g = cfg.global_
    get = meta.get if isinstance(meta, dict) else (lambda k: getattr(meta, k))
    return global_masks(g.strategy, image=get("image"), volume=get("volume"), partition=get("partition"),
                        position=get("position"), threshold=g.threshold, pairing=g.gd_pairing)


def _global_views_loss(embed: torch.nn.Module, views: Batch, cfg: RunConfig,
                       stats: dict[str, float] | None = None) -> torch.Tensor:
    """The global loss of ``cfg.global_`` on a batch of views; ``embed``: images -> g1 embeddings.

    ``stats``: if given, receives ``"chance"``, the loss of identical embeddings under this batch's masks.
    Under torchrun: of the global batch, from every rank's embeddings (gradients flow to the local slice) and
    metadata. With ``g.base_temperature`` set, the loss (and the chance level) is multiplied by
    ``temperature / base_temperature``, as PCL's code does (0.1 / 0.07): Adam is (up to its eps) blind to it, but
    under SGD it scales the step like the lr."""
    g = cfg.global_
    with _autocast(views.images.device):
        z = embed(_input(views.images, cfg))
    z, meta = distributed.gather_with_grad(_full(z)), distributed.gather_metadata(views)
    positives, negatives = _global_masks(meta, cfg)
    scale = None if g.base_temperature is None else g.temperature / g.base_temperature
    if stats is not None:
        stats["chance"] = chance_level(positives.cpu(), negatives.cpu(), GLOBAL_REDUCTION[g.strategy])
        if scale is not None:
            stats["chance"] *= scale
    loss = masked_info_nce(z, positives, negatives, g.temperature, GLOBAL_REDUCTION[g.strategy])
    return loss if scale is None else loss * scale


def _local_maps_loss(f1: torch.Tensor, f2: torch.Tensor, meta: "Batch | dict", cfg: RunConfig,
                     projection=None) -> torch.Tensor:
    """The local loss of ``cfg.local`` on the maps ``(B, C, h, w)`` of two views of the slices in ``meta``."""
    lc = cfg.local
    get = meta.get if isinstance(meta, dict) else (lambda k: getattr(meta, k))
    return local_loss(
        f1, f2, get("image"), get("volume"), get("partition"), strategy=lc.strategy, form=lc.form,
        region_size=lc.region_size, pooling=lc.pooling, n_negatives=lc.n_negatives, temperature=lc.temperature,
        negatives=lc.negatives, ld_pairs=lc.ld_pairs, ld_negative_regions=lc.ld_negative_regions,
        region_projection=projection,
    )


def _local_views_loss(model: UNet, maps_of: torch.nn.Module, batch: Batch, views: Batch,
                      cfg: RunConfig, stats: dict[str, float] | None = None) -> torch.Tensor:
    """The local loss of ``cfg.local`` on intensity-only views of ``batch``; ``maps_of``: encoder features -> g2
    maps (the frozen encoder runs without gradients). Under torchrun: of the global batch, as the global loss."""
    lc = cfg.local
    device = views.images.device
    with torch.no_grad(), _autocast(device):
        features = model.encode(_input(views.images, cfg))
    with _autocast(device):
        maps = maps_of(features)
    # (B, C, h, w) each: view 1 and view 2 of the same slices
    maps1, maps2 = (distributed.gather_with_grad(m) for m in _full(maps).chunk(2))
    meta = distributed.gather_metadata(batch)
    # the head's region projection (if any) runs on the gathered regions: its gradient is that of the global loss
    # on every rank, identical across ranks, so DDP's average leaves it exact
    head = _local_head_of(maps_of)
    projection = head.project_regions if getattr(head, "projection", None) is not None else None
    if stats is not None:  # identical region embeddings: constant maps, compared without the projection
        with torch.no_grad():
            ones = torch.ones_like(maps1[:, :1])
            stats["chance"] = float(_local_maps_loss(ones, ones, meta, cfg))
    return _local_maps_loss(maps1, maps2, meta, cfg, projection)


def _local_head_of(maps_of: torch.nn.Module) -> torch.nn.Module | None:
    """The head inside ``maps_of``: a :class:`_LocalMaps`, possibly wrapped by DDP (``.module``) or
    ``torch.compile`` (``._orig_mod``); ``None`` if there is none."""
    module = maps_of
    while not isinstance(module, _LocalMaps):
        inner = getattr(module, "module", None)
        module = getattr(module, "_orig_mod", None) if inner is None else inner
        if module is None:
            return None
    return module.head


def _batch_slices(cfg: RunConfig, strategy: str) -> int:
    """Unique slices per batch for a strategy (views double it)."""
    if strategy in ("GD-", "GD"):
        return cfg.global_.n_volumes * cfg.data.n_partitions
    if strategy == "LD":
        return cfg.local.n_volumes * cfg.data.n_partitions
    if strategy == "LR":
        return cfg.local.batch_size
    return cfg.global_.batch_size


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


# ------------------------------------------------------------------------------------------------ stage 2: local
def build_local_head(cfg: RunConfig, model: UNet, n_blocks: int | None = None) -> LocalHead:
    """g2 and the region projection for ``cfg.local`` on top of decoder block ``n_blocks`` (default
    ``decoder_blocks``): ``head_norm``, ``projection``, ``projection_dim``; the projection's input size follows
    ``region_size`` and ``pooling`` (``C*K*K`` for flatten, ``C`` for mean)."""
    lc = cfg.local
    n_blocks = lc.decoder_blocks if n_blocks is None else int(n_blocks)
    return LocalHead(in_channels=model.decoder_channels(n_blocks), norm=lc.head_norm, projection=lc.projection,
                     region_size=lc.region_size, pooling=lc.pooling, projection_dim=lc.projection_dim)


def pretrain_local(
    cfg: RunConfig,
    volumes: list[Volume],
    init: "StageResult | dict | str | Path",
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    progress: bool | str | None = None,
    val: list[Volume] | None = None,
) -> StageResult:
    """Pre-train the first ``decoder_blocks`` decoder blocks and g2 with a local loss (LR or LD).

    The encoder comes from ``init`` (a global stage) and stays frozen (weights and batch-norm statistics).
    Views are intensity-only, so a pixel of one view corresponds to the same pixel of the other.
    """
    lc = cfg.local
    if lc.strategy not in LOCAL_STRATEGIES:
        raise ValueError(f"unknown local strategy {lc.strategy!r}; choose one of {', '.join(LOCAL_STRATEGIES)}")
    device = torch.device(device) if device is not None else default_device()
    with _run_folder(out, cfg, resume, overwrite, "local") as out_dir:
        return _pretrain_local(cfg, volumes, init, out_dir, resume, device, progress, val)


def _pretrain_local(cfg: RunConfig, volumes: list[Volume], init: "StageResult | dict | str | Path",
                    out_dir: Path | None, resume: bool, device: torch.device, progress: bool | str | None,
                    val: list[Volume] | None) -> StageResult:
    lc = cfg.local
    aug_gen = _seed_everything(cfg.seed)
    model = build_model(cfg)
    state, _ = _init_state(init)
    load_pretrained(model, state, parts=("encoder",))
    model.to(device)
    n_blocks = lc.decoder_blocks
    head = build_local_head(cfg, model, n_blocks).to(device)  # g2 and the region projection, trained together
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    trained = list(model.decoder[:n_blocks].parameters()) + list(head.parameters())
    optimiser = _adam(trained, lc.lr)
    scaler = _grad_scaler(device)
    sampler = _contrastive_sampler(volumes, cfg, by_partition=lc.strategy == "LD",
                                   n_volumes=lc.n_volumes, batch_size=lc.batch_size)
    maps_of = _prepare(cfg, _LocalMaps(model, head, n_blocks), model)
    monitor = LocalMonitor(val or volumes, cfg, lambda f1, f2, b, project=True: _local_maps_loss(
        f1, f2, b, cfg, head.project_regions if project and head.projection is not None else None), device)
    watch = CollapseWatch(f"local {lc.strategy}", _logged_steps(lc))
    model.train()
    model.encoder.eval()  # frozen: keep its batch-norm statistics too
    head.train()

    def step(i: int) -> dict[str, float]:
        batch = sampler.sample().to(device, non_blocking=True)
        views = make_views(batch, aug_gen, stage="local")
        stats: dict[str, float] = {}
        loss = _local_views_loss(model, maps_of, batch, views, cfg, stats)
        _optimiser_step(loss, optimiser, scaler)
        metrics = {"loss": loss.item(), "loss_over_chance": loss.item() / stats["chance"]}
        if _is_logged(i, lc):
            project = head.project_regions if head.projection is not None else None
            local_maps = _LocalMaps(model, head, n_blocks)
            metrics.update(monitor.measure(model.encode, local_maps, project, model.decoder, head))
            watch.update(i + 1, metrics)
        return metrics

    return _run_contrastive_stage("local", lc, cfg, step, model, head, optimiser, sampler, aug_gen,
                                  out_dir, resume, progress, extra_state={"health": watch})


# --------------------------------------------------------------------------------------------- stage 3: fine-tune
SEGMENTATION_LOSSES = ("dice", "dice+ce", "glcl")
GLCL_DICE_EPSILON = 1e-10  # added to the Dice denominator only (GLCL's losses.py); no smoothing in the numerator


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "dice+ce") -> torch.Tensor:
    """Fine-tuning loss of a batch of slices.

    Args:
        logits: ``(B, K, H, W)`` raw scores (softmax over K inside).
        labels: ``(B, H, W)`` int64 in ``0..K-1``.
        kind: which loss (probabilities ``p = softmax(logits)``, one-hot reference ``r``):

            * ``"glcl"``: GLCL's fine-tuning loss (the default of the official code's loss switch):
              ``1 - mean over images b and classes k, background included, of
              2 sum_hw p r / (sum_hw p + sum_hw r + 1e-10)``. Dice per image and class, then averaged; a class
              absent from an image and (almost) from its prediction contributes Dice ~ 0 and no gradient.
            * ``"dice"``: one soft Dice per foreground class with sums over the whole batch,
              ``(2 sum p r + 1e-5) / (sum p + sum r + 1e-5)``, ``1 -`` its mean over classes ``1..K-1``.
            * ``"dice+ce"``: ``"dice"`` plus the mean pixel-wise cross-entropy (neither paper's loss; PCL
              fine-tunes with cross-entropy alone).

    Returns:
        Scalar loss. Under torchrun every term is taken over the global batch (every rank's share): the batch-wide
        Dice sums are summed across ranks; for ``"glcl"`` the per-image Dice terms and their count are summed
        across ranks, so the mean runs over all images of the global batch. Every rank then holds the
        single-process loss of that batch.
    """
    if kind not in SEGMENTATION_LOSSES:
        raise ValueError(f"unknown segmentation loss {kind!r}; choose one of {', '.join(SEGMENTATION_LOSSES)}")
    logits = _full(logits)
    n_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(labels, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    if kind == "glcl":
        intersection = (probs * onehot).sum((2, 3))  # (B, K)
        denominator = probs.sum((2, 3)) + onehot.sum((2, 3)) + GLCL_DICE_EPSILON
        dice = 2 * intersection / denominator  # (B, K): per image and class, background included
        count = torch.tensor(float(dice.numel()), dtype=dice.dtype, device=dice.device)
        totals = distributed.all_reduce_with_grad(torch.stack([dice.sum(), count]))
        return 1 - totals[0] / totals[1].detach()
    dims = (0, 2, 3)
    intersection = distributed.all_reduce_with_grad((probs * onehot).sum(dims))
    denominator = distributed.all_reduce_with_grad(probs.sum(dims) + onehot.sum(dims))
    dice = (2 * intersection + 1e-5) / (denominator + 1e-5)
    loss = 1 - dice[1:].mean()  # foreground classes only
    if kind == "dice+ce":
        loss = loss + distributed.mean_over_ranks(F.cross_entropy(logits, labels), labels.numel())
    return loss


def finetune(
    cfg: RunConfig,
    labelled: list[Volume],
    val: list[Volume],
    init: "StageResult | dict | str | Path | None" = None,
    init_parts: tuple[str, ...] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    val_resolution: str = "native",
) -> StageResult:
    """Fine-tune a U-Net on the labelled volumes; keep the weights with the best validation Dice.

    ``init=None`` is random initialisation. By default a global-stage init loads the encoder, a local-stage init
    the encoder and its pre-trained decoder blocks (``init_parts`` overrides). The segmentation head is always new.
    With ``cfg.finetune.freeze`` the run is a frozen-representation probe: the encoder and the loaded decoder blocks
    stay as they are (weights and norm statistics) and only the remaining layers are trained.
    ``val_resolution``: grid of the validation Dice, ``"native"`` (each volume's own grid where it carries one,
    as GLCL's model selection does) or ``"resampled"`` (see :func:`evaluate`).
    """
    fc = cfg.finetune
    if not labelled:
        raise ValueError("finetune needs at least one labelled volume")
    if fc.loss not in SEGMENTATION_LOSSES:
        raise ValueError(f"unknown finetune.loss {fc.loss!r}; choose one of {', '.join(SEGMENTATION_LOSSES)}")
    if val_resolution not in EVAL_RESOLUTIONS:
        raise ValueError(f"val_resolution must be one of {EVAL_RESOLUTIONS}, got {val_resolution!r}")
    for v in list(labelled) + list(val):
        if v.label is None:
            raise ValueError(f"{v.source or v.name}: fine-tuning and validation volumes need labels")
        if int(v.label.max()) >= cfg.model.n_classes:
            raise ValueError(f"{v.source or v.name}: label {int(v.label.max())} >= n_classes={cfg.model.n_classes}")
    device = torch.device(device) if device is not None else default_device()
    with _run_folder(out, cfg, resume, overwrite, "finetune") as out_dir:
        return _finetune(cfg, labelled, val, init, init_parts, out_dir, resume, device, progress, val_resolution)


def _finetune(cfg: RunConfig, labelled: list[Volume], val: list[Volume],
              init: "StageResult | dict | str | Path | None", init_parts: tuple[str, ...] | None,
              out_dir: Path | None, resume: bool, device: torch.device, progress: bool | str | None,
              val_resolution: str) -> StageResult:
    fc = cfg.finetune
    aug_gen = _seed_everything(cfg.seed)
    model = build_model(cfg)
    loaded: list[str] = []
    frozen_units = ["encoder"] if fc.freeze else []
    if init is not None:
        state, stage = _init_state(init)
        parts = init_parts or (("encoder", "decoder") if stage in ("local", "model") else ("encoder",))
        summary = load_pretrained(model, state, parts=parts)
        loaded = list(parts)
        if fc.freeze and stage == "local":  # the decoder blocks the local stage trained (the others are fresh)
            trained_blocks = {f"decoder.{i}" for i in range(cfg.local.decoder_blocks)}
            frozen_units += [u for u in summary.loaded_prefixes if u in trained_blocks]
    frozen = [model.get_submodule(u) for u in frozen_units]
    for module in frozen:
        module.requires_grad_(False)
    model.to(device)
    sampler = LabelledSliceSampler(labelled, batch_size=fc.batch_size, seed=cfg.seed)
    sampler.shard(distributed.rank(), distributed.world_size())
    net = _prepare(cfg, model)
    optimiser = _adam([q for q in model.parameters() if q.requires_grad], fc.lr)
    scaler = _grad_scaler(device)
    best: dict[str, Any] = {"dice": -1.0, "step": 0, "weights": None}

    def step(i: int) -> dict[str, float]:
        model.train()
        for module in frozen:  # frozen layers keep their norm statistics too
            module.eval()
        batch = sampler.sample().to(device, non_blocking=True)
        images, labels = augment_pair(batch.images, batch.labels, aug_gen)
        with _autocast(device):
            logits = net(_input(images, cfg))
        loss = segmentation_loss(logits, labels, fc.loss)
        _optimiser_step(loss, optimiser, scaler)
        metrics = {"loss": loss.item()}
        if val and ((i + 1) % fc.eval_every == 0 or i + 1 == fc.iterations):
            val_dice = float(evaluate(model, val, device=device, n_classes=cfg.model.n_classes,
                                      resolution=val_resolution)["dice"].mean())
            metrics["val_dice"] = val_dice
            if val_dice > best["dice"]:
                best.update(dice=val_dice, step=i + 1,
                            weights={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return metrics

    def restore(extra: dict[str, Any]) -> None:
        best.update(extra.get("best", {}))

    result = run_loop(
        step,
        {"model": _ModuleState(model), "optimiser": optimiser, "sampler": sampler,
         "augment": GeneratorState(aug_gen)},
        iterations=fc.iterations, out=out_dir, resume=resume, checkpoint_every=fc.checkpoint_every,
        log_every=min(fc.log_every, fc.eval_every), images_per_step=fc.batch_size,
        desc=f"fine-tune n={len(labelled)}", progress=progress,
        on_checkpoint=lambda: {"best": dict(best)}, on_restore=restore,
    )
    if best["weights"] is not None:  # model selection on validation volumes only
        model.load_state_dict(best["weights"])
    model.eval()
    out_dir = _save_final(out_dir, {"model": model.state_dict(), "stage": "finetune",
                                    "best_step": best["step"], "best_val_dice": best["dice"]})
    history = _history_table(result.history)
    return StageResult(model, None, history, out_dir,
                       {"seconds": result.seconds, "stage": "finetune", "best_step": best["step"],
                        "best_val_dice": best["dice"], "loaded": loaded, "frozen": frozen_units})


# ---------------------------------------------------------------------------------------------------- evaluation
def dice_per_class(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """3D Dice per class. pred, target: (Z, H, W) int. Returns (n_classes,) float; NaN where a class is absent
    from both prediction and reference (undefined, not perfect)."""
    scores = np.full(n_classes, np.nan)
    for k in range(n_classes):
        p, t = pred == k, target == k
        total = p.sum() + t.sum()
        if total > 0:
            scores[k] = 2.0 * np.logical_and(p, t).sum() / total
    return scores


@torch.no_grad()
def _predict_logits(model: UNet, volume: Volume, device: torch.device | str | None = None,
                    batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Logits ``(b, K, H, W)`` on the device for consecutive chunks of ``batch_size`` slices of ``volume``, in eval
    mode (the model's mode is restored afterwards)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    slices = torch.from_numpy(volume.image).unsqueeze(1)  # (Z, 1, H, W)
    try:
        for start in range(0, slices.shape[0], batch_size):
            x = slices[start:start + batch_size].to(device)
            with _autocast(device):
                logits = model(x)
            yield logits
    finally:
        model.train(was_training)


def predict_volume(model: UNet, volume: Volume, device: torch.device | str | None = None,
                   batch_size: int = 32) -> np.ndarray:
    """Label map (Z, H, W) int64 on the preprocessed grid, predicted slice by slice."""
    out = [logits.argmax(dim=1).cpu() for logits in _predict_logits(model, volume, device, batch_size)]
    return torch.cat(out).numpy().astype(np.int64)


def native_prediction(model: UNet, volume: Volume, device: torch.device | str | None = None,
                      batch_size: int = 32, interpolation: str = "linear") -> np.ndarray:
    """Label map ``(Z, H0, W0)`` int64 on the volume's native grid (``volume.meta["native_grid"]``, recorded by the
    NIfTI loader): the softmax probabilities ``(b, K, H, W)`` predicted on the preprocessed grid are mapped back
    through the centre crop/pad and the in-plane resampling, bilinearly by default, then argmax
    (:func:`glcl_core.data.preprocess.scores_to_native`). Interpolating probabilities rather than the predicted
    labels gives smooth boundaries on a finer native grid (nearest-neighbour label upsampling gives staircase
    boundaries of preprocessed-pixel steps). Native pixels cropped away by preprocessing are background.
    ``interpolation="nearest"`` is nearest-neighbour resampling of the predicted labels.
    """
    grid = (volume.meta or {}).get("native_grid")
    if grid is None:
        raise ValueError(f"{volume.source or volume.name}: no meta['native_grid'] (volume not made by the loader)")
    out = []
    for logits in _predict_logits(model, volume, device, batch_size):
        probs = logits.float().softmax(dim=1).cpu().numpy()
        out.append(scores_to_native(probs, grid, interpolation))
    return np.concatenate(out)


EVAL_RESOLUTIONS = ("native", "resampled")


def evaluate(model: UNet, volumes: list[Volume], device: torch.device | str | None = None,
             n_classes: int | None = None, class_names: list[str] | None = None, resolution: str = "native",
             interpolation: str = "linear"):
    """Foreground 3D Dice per class and test volume, as a tidy table (volume, class, dice, resolution).

    Args:
        resolution: ``"native"`` (default): Dice on each volume's own grid, the prediction mapped back
            (:func:`native_prediction`) and compared with the label at its stored resolution (canonical orientation,
            not resampled); needs ``meta["native_grid"]`` and a native label (:func:`glcl_core.data.io.native_label`),
            which volumes from :func:`glcl_core.data.load_volumes` (NIfTI folders and the embedded data set) carry.
            Other volumes (e.g. built by hand) fall back to the preprocessed grid. ``"resampled"``: Dice on the
            preprocessed grid for every volume (faster; voxels cropped away by preprocessing are not counted and the
            label has been resampled with nearest neighbour).
        interpolation: how native predictions are mapped back, ``"linear"`` (probabilities) or ``"nearest"``.
    Returns:
        pandas.DataFrame with one row per volume and foreground class; ``resolution`` says which grid each row's
        Dice was computed on (``"native"`` or ``"resampled"``), and ``table.attrs["resolution"]`` is that value
        for the whole table (``"mixed"`` when volumes differ). Dice is NaN for a class absent from both prediction
        and reference of one volume; a class absent from every volume's reference and prediction (e.g. declared
        but not in this data set) has no rows at all.
    """
    import pandas as pd

    from glcl_core.data.io import native_label

    if resolution not in EVAL_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {EVAL_RESOLUTIONS}, got {resolution!r}")
    n_classes = n_classes or model.n_classes
    rows = []
    for v in volumes:
        if v.label is None:
            raise ValueError(f"{v.source or v.name}: evaluation needs labels")
        grid = (v.meta or {}).get("native_grid")
        target = native_label(v) if resolution == "native" and grid is not None else None
        if target is not None:
            if target.shape != (v.n_slices, *grid.shape):
                raise ValueError(f"{v.source or v.name}: native label shape {target.shape} does not match "
                                 f"({v.n_slices}, {grid.shape[0]}, {grid.shape[1]})")
            used = "native"
            pred = native_prediction(model, v, device, interpolation=interpolation)
        else:
            used, pred, target = "resampled", predict_volume(model, v, device), v.label
        scores = dice_per_class(pred, target, n_classes)
        for k in range(1, n_classes):
            name = class_names[k] if class_names else str(k)
            rows.append({"volume": v.name, "class": name, "dice": float(scores[k]), "resolution": used})
    table = pd.DataFrame(rows, columns=["volume", "class", "dice", "resolution"])
    seen = table.groupby("class", sort=False)["dice"].transform("count") > 0  # classes with any defined Dice
    table = table[seen].reset_index(drop=True)
    used_all = set(table["resolution"])
    table.attrs["resolution"] = used_all.pop() if len(used_all) == 1 else ("mixed" if used_all else resolution)
    return table
