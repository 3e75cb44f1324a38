"""The two pre-training stages: global (encoder and g1: GR, GD-, GD, PCL) and local (first decoder blocks and g2
on the frozen encoder: LR, LD), with their samplers, optimisers, lr schedules and health monitors.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from glcl_core import distributed
from glcl_core.augment import global_augmentation, make_views
from glcl_core.contrastive.global_masks import GLOBAL_REDUCTION
from glcl_core.data.volume import Volume
from glcl_core.device import default_device
from glcl_core.models import GlobalHead, LocalHead, UNet, load_pretrained
from glcl_core.samplers import PartitionSampler, RandomSliceSampler
from glcl_core.train.config import GLOBAL_STRATEGIES, LOCAL_STRATEGIES, GlobalConfig, LocalConfig, RunConfig
from glcl_core.train.engine import GeneratorState, run_loop
from glcl_core.train.monitor import CollapseWatch, GlobalMonitor, LocalMonitor
from glcl_core.train.pretrain_step import (
    _global_masks, _global_views_loss, _GlobalEmbedder, _local_maps_loss, _local_views_loss, _LocalMaps,
)
from glcl_core.train.stages import (
    StageResult, _adam, _grad_scaler, _history_table, _init_state, _ModuleState, _optimiser_step, _prepare,
    _run_folder, _save_final, _seed_everything, build_model,
)


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
                       {"seconds": result.seconds, "cpu_seconds": result.cpu_seconds, "stage": stage})


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


def _logged_steps(stage_cfg: "GlobalConfig | LocalConfig") -> int:
    """How many steps of a stage the loop logs (every ``log_every`` and the last)."""
    return stage_cfg.iterations // stage_cfg.log_every + int(stage_cfg.iterations % stage_cfg.log_every != 0)


def _is_logged(i: int, stage_cfg: "GlobalConfig | LocalConfig") -> bool:
    return (i + 1) % stage_cfg.log_every == 0 or i + 1 == stage_cfg.iterations


def _batch_slices(cfg: RunConfig, strategy: str) -> int:
    """Unique slices per batch for a strategy (views double it)."""
    if strategy in ("GD-", "GD"):
        return cfg.global_.n_volumes * cfg.data.n_partitions
    if strategy == "LD":
        return cfg.local.n_volumes * cfg.data.n_partitions
    if strategy == "LR":
        return cfg.local.batch_size
    return cfg.global_.batch_size


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
    health: bool = True,
) -> StageResult:
    """Pre-train the first ``decoder_blocks`` decoder blocks and g2 with a local loss (LR or LD).

    The encoder comes from ``init`` (a global stage) and stays frozen (weights and batch-norm statistics).
    Views are intensity-only, so a pixel of one view corresponds to the same pixel of the other.

    Health: at every logged step ``loss_over_chance``, and with ``health=True`` (default) the held-out measures of
    :class:`~glcl_core.train.monitor.LocalMonitor` on ``val`` (``val_loss_over_chance``, ``retrieval_top1``,
    ``effective_rank``, ``embedding_std``). ``health=False`` skips the held-out measures, which cost about as
    much as a training step each (worth it for runs that log every step and read only the loss, such as the
    ablations of :func:`~glcl_core.analysis.ablation.local_ablation`). The training itself is the same either
    way: the monitor draws its batches from its own fixed-seed sampler and measures in eval mode without
    gradients, so it changes no weight, batch-norm statistic or random stream of the run.
    """
    lc = cfg.local
    if lc.strategy not in LOCAL_STRATEGIES:
        raise ValueError(f"unknown local strategy {lc.strategy!r}; choose one of {', '.join(LOCAL_STRATEGIES)}")
    device = torch.device(device) if device is not None else default_device()
    with _run_folder(out, cfg, resume, overwrite, "local") as out_dir:
        return _pretrain_local(cfg, volumes, init, out_dir, resume, device, progress, val, health)


def _pretrain_local(cfg: RunConfig, volumes: list[Volume], init: "StageResult | dict | str | Path",
                    out_dir: Path | None, resume: bool, device: torch.device, progress: bool | str | None,
                    val: list[Volume] | None, health: bool = True) -> StageResult:
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
        f1, f2, b, cfg, head.project_regions if project and head.projection is not None else None),
        device) if health else None
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
            if monitor is not None:
                project = head.project_regions if head.projection is not None else None
                local_maps = _LocalMaps(model, head, n_blocks)
                metrics.update(monitor.measure(model.encode, local_maps, project, model.decoder, head))
            watch.update(i + 1, metrics)
        return metrics

    return _run_contrastive_stage("local", lc, cfg, step, model, head, optimiser, sampler, aug_gen,
                                  out_dir, resume, progress, extra_state={"health": watch})
