"""Training-health monitor of a pre-training stage: fixed held-out batches, measured at every logged step.

The monitor draws its batches once, from the volumes it is given (the validation volumes when the caller has them),
with its own seeded generators, and measures the stage's modules in eval mode without gradients, so it changes
neither the training stream nor the weights: a run with the monitor trains exactly as one without it.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch

from glcl_core.augment import global_augmentation, make_views
from glcl_core.contrastive.health import (
    CHANCE_TOLERANCE,
    chance_level,
    collapse_reason,
    effective_rank,
    embedding_std,
    retrieval_top1,
)
from glcl_core.contrastive.kernel import masked_info_nce
from glcl_core.data.volume import Volume
from glcl_core.samplers import PartitionSampler, RandomSliceSampler

MONITOR_SEED = 20_201_207  # fixed: every strategy and every run sees the same held-out batches
HEALTH_COLUMNS = ("loss_over_chance", "val_loss_over_chance", "retrieval_top1", "effective_rank", "embedding_std")


class _EvalMode:
    """Put modules in eval mode for a measurement and restore each one's mode afterwards."""

    def __init__(self, *modules: torch.nn.Module):
        self.modules = modules

    def __enter__(self):
        self.modes = [[m.training for m in module.modules()] for module in self.modules]
        for module in self.modules:
            module.eval()

    def __exit__(self, *exc):
        for module, modes in zip(self.modules, self.modes):
            for m, mode in zip(module.modules(), modes):
                m.train(mode)


class CollapseWatch:
    """Counts logged steps at chance and prints one warning line the first time a stage looks collapsed."""

    def __init__(self, desc: str, logged_steps: int):
        self.desc, self.logged_steps = desc, max(1, logged_steps)
        self.near_chance = 0
        self.warning: str | None = None

    def update(self, step: int, metrics: dict[str, float]) -> None:
        ratio = metrics.get("loss_over_chance")
        if ratio is not None and abs(ratio - 1.0) <= CHANCE_TOLERANCE:
            self.near_chance += 1
        reason = collapse_reason(metrics.get("effective_rank", float("nan")), self.near_chance, self.logged_steps)
        if reason is not None and self.warning is None:
            self.warning = f"warning: {self.desc} looks collapsed at step {step}: {reason}"
            print(self.warning, file=sys.stderr, flush=True)

    def state_dict(self) -> dict:
        return {"near_chance": self.near_chance, "warning": self.warning}

    def load_state_dict(self, state: dict) -> None:
        self.near_chance = int(state.get("near_chance", 0))
        self.warning = state.get("warning")


def _held_out_sampler(volumes: list[Volume], cfg, by_partition: bool, n_volumes: int, batch_size: int):
    """The monitor's fixed-seed sampler: a stage's batch shape, capped at what the held-out volumes hold."""
    if by_partition:
        return PartitionSampler(volumes, n_volumes=min(n_volumes, len(volumes)),
                                n_partitions=cfg.data.n_partitions, seed=MONITOR_SEED)
    n_slices = sum(v.n_slices for v in volumes)
    return RandomSliceSampler(volumes, batch_size=min(batch_size, n_slices), seed=MONITOR_SEED,
                              n_partitions=cfg.data.n_partitions)


class GlobalMonitor:
    """Held-out batches of a global strategy and their masks; ``measure(embed)`` -> the health metrics.

    ``masks_of(views) -> (positives, negatives)`` builds the strategy's ``(N, N)`` masks from a batch of views.
    """

    def __init__(self, volumes: list[Volume], cfg, masks_of: Callable, reduction: str, device: torch.device,
                 n_batches: int = 2):
        g = cfg.global_
        sampler = _held_out_sampler(volumes, cfg, g.strategy in ("GD-", "GD"), g.n_volumes, g.batch_size)
        views_gen = torch.Generator().manual_seed(MONITOR_SEED)
        self.temperature, self.reduction = g.temperature, reduction
        self.batches = []
        for _ in range(n_batches):
            views = make_views(sampler.sample(), views_gen, stage="global",
                               params=global_augmentation(g.augmentation))
            positives, negatives = masks_of(views)
            self.batches.append((views.images.to(device), positives.to(device), negatives.to(device),
                                 chance_level(positives.cpu(), negatives.cpu(), reduction)))

    @torch.no_grad()
    def measure(self, embed: Callable[[torch.Tensor], torch.Tensor], *modules: torch.nn.Module) -> dict[str, float]:
        """Mean over the held-out batches of loss / chance, top-1 positive retrieval, effective rank, std."""
        rows = []
        with _EvalMode(*modules):
            for images, positives, negatives, chance in self.batches:
                z = embed(images).float()
                loss = float(masked_info_nce(z, positives, negatives, self.temperature, self.reduction))
                rows.append({"val_loss_over_chance": loss / chance,
                             "retrieval_top1": retrieval_top1(z, positives),
                             "effective_rank": effective_rank(z),
                             "embedding_std": embedding_std(z)})
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


class LocalMonitor:
    """Held-out batches for a local stage; ``measure(maps_of, project)`` -> the health metrics.

    ``loss_of(f1, f2, batch) -> loss`` is the stage's local loss on two views' maps (``(B, C, h, w)`` each).
    Retrieval and the collapse measures use the 13 sparse regions of both views of every slice, projected as the
    loss projects them: a region's nearest neighbour among the other 25 regions of its slice should be the same
    region in the other view.
    """

    def __init__(self, volumes: list[Volume], cfg, loss_of: Callable, device: torch.device, n_batches: int = 2):
        from glcl_core.augment import LocalAug

        lc = cfg.local
        sampler = _held_out_sampler(volumes, cfg, lc.strategy == "LD", lc.n_volumes, lc.batch_size)
        views_gen = torch.Generator().manual_seed(MONITOR_SEED)
        self.loss_of, self.region_size, self.pooling = loss_of, lc.region_size, lc.pooling
        self.batches = []
        for _ in range(n_batches):
            batch = sampler.sample()
            views = make_views(batch, views_gen, stage="local", params=LocalAug())
            self.batches.append((batch.to(device), views.images.to(device)))

    @torch.no_grad()
    def measure(self, encode: Callable, maps_of: Callable, project: Callable | None,
                *modules: torch.nn.Module) -> dict[str, float]:
        from glcl_core.contrastive.regions import pool_regions, sparse_region_corners

        rows = []
        with _EvalMode(*modules):
            for batch, images in self.batches:
                maps1, maps2 = maps_of(encode(images)).float().chunk(2)
                b, _, h, w = maps1.shape
                loss = float(self.loss_of(maps1, maps2, batch))
                chance = float(self.loss_of(torch.ones_like(maps1), torch.ones_like(maps2), batch, False))
                corners = sparse_region_corners(h, w, self.region_size)
                regions = torch.cat([pool_regions(m, self.region_size, self.pooling, corners)
                                     for m in (maps1, maps2)], dim=1)  # (B, 2R, D): view 1, then view 2
                if project is not None:
                    regions = project(regions)
                r = corners.shape[0]
                # Retrieval among the regions of the region's own slice (both views): the candidates its loss
                # contrasts. Across slices the same place (e.g. air in a corner) looks alike by design.
                slot = torch.arange(2 * r, device=regions.device)
                positives = (slot[:, None] % r == slot[None, :] % r) & (slot[:, None] != slot[None, :])
                retrieval = sum(retrieval_top1(regions[i], positives) for i in range(b)) / b
                z = regions.reshape(b * 2 * r, -1)
                rows.append({"val_loss_over_chance": loss / chance, "retrieval_top1": retrieval,
                             "effective_rank": effective_rank(z), "embedding_std": embedding_std(z)})
        return {k: sum(row[k] for row in rows) / len(rows) for k in rows[0]}
