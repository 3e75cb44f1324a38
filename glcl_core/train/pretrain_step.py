"""The loss of one pre-training step: the modules a step trains (g1 on the encoder, g2 on the first decoder
blocks) and the global and local contrastive loss of a batch of views, over the global batch under torchrun.
"""
from __future__ import annotations

import torch

from glcl_core import distributed
from glcl_core.batch import Batch
from glcl_core.contrastive.global_masks import GLOBAL_REDUCTION, global_masks
from glcl_core.contrastive.health import chance_level
from glcl_core.contrastive.kernel import masked_info_nce
from glcl_core.contrastive.local_masks import local_loss
from glcl_core.models import UNet
from glcl_core.train.config import RunConfig
from glcl_core.train.stages import _autocast, _full, _input


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
