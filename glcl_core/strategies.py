"""Contrastive strategies as mask builders over batch metadata; the loss itself is :func:`masked_info_nce`.

Global (encoder + g1, one embedding per view of a slice; ``N`` = views x slices):

==========  ==============================================================  ==========================  =========
strategy    positives of anchor i                                           negatives (denominator)     reduction
==========  ==============================================================  ==========================  =========
``GR``      same ``image`` (the other view)                                 every other embedding       pairs
``GD-``     same ``image``                                                  a different ``partition``   pairs
``GD``      same ``image``, or same ``partition`` of another ``volume``     a different ``partition``   pairs
``PCL``     ``|position_i - position_j| < threshold``                       every other embedding       anchors
==========  ==============================================================  ==========================  =========

In ``GD-``, same-partition slices of other volumes are neither positive nor negative. In ``GD``, two different
slices of the same partition of the *same* volume (not drawn by the paper's sampler) are neither.

Local (decoder block + g2 feature maps of two intensity-only views, pixel-aligned; a region is a K x K patch):

* ``LR``: positive = the same region of the same image in the other view; negatives = other regions of the same
  image, both views.
* ``LD``: as ``LR``, plus the same region in slices of the same partition of other volumes (both views).

``form="sparse"``: the paper's 13 fixed regions, ``n_negatives`` (default 10 = 5 other regions x 2 views, as in
the official code) per anchor. ``form="dense"``: every region of a stride-K grid, every other region of the image a
negative; computed block by block (one block per image) with bounded memory.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from glcl_core.losses import (
    BlockMask,
    grid_region_corners,
    masked_info_nce,
    pool_regions,
    sparse_region_corners,
)

GLOBAL_STRATEGIES = ("GR", "GD-", "GD", "PCL")
GLOBAL_REDUCTION = {"GR": "pairs", "GD-": "pairs", "GD": "pairs", "PCL": "anchors"}
LOCAL_STRATEGIES = ("LR", "LD")
LOCAL_FORMS = ("sparse", "dense")
SPARSE_NEGATIVES = 10  # official code: 5 hand-picked other regions x 2 views
_DEFAULT_SEED = 0  # fixed draw of sparse/sampled negatives when no generator is given (like the hand-picked ones)
_DENSE_PIECE = 1 << 24  # similarity entries per piece (~64 MB float32) when chunk_size is not given

__all__ = [
    "GLOBAL_STRATEGIES",
    "GLOBAL_REDUCTION",
    "LOCAL_STRATEGIES",
    "LOCAL_FORMS",
    "global_masks",
    "global_loss",
    "local_masks",
    "local_loss",
    "local_region_corners",
]


# ----------------------------------------------------------------------------------------------------------------
# Global strategies
# ----------------------------------------------------------------------------------------------------------------
def _check_strategy(strategy: str, valid: tuple[str, ...], kind: str) -> None:
    if strategy not in valid:
        raise ValueError(f"unknown {kind} strategy {strategy!r}; valid: {', '.join(valid)}")


def _metadata_vector(x: Any, name: str, n: int | None, device: torch.device | None) -> torch.Tensor:
    if x is None:
        raise ValueError(f"this strategy needs the {name!r} metadata, got None")
    t = torch.as_tensor(x, device=device)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor (N,), got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries, expected {n}")
    return t


def global_masks(
    strategy: str,
    image: torch.Tensor | None,
    volume: torch.Tensor | None,
    partition: torch.Tensor | None,
    position: torch.Tensor | None,
    threshold: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative masks of a global strategy.

    Args:
        strategy: one of :data:`GLOBAL_STRATEGIES`.
        image, volume, partition, position: ``(N,)`` metadata (views of one slice share ``image``). Only those the
            strategy reads are required (GR: image; GD-: image, partition; GD: image, volume, partition;
            PCL: position); the others may be ``None``.
        threshold: PCL's position threshold (0.1 CHD, 0.35 ACDC).

    Returns:
        ``positives, negatives``: ``(N, N)`` bool on the metadata's device, diagonals False.
    """
    _check_strategy(strategy, GLOBAL_STRATEGIES, "global")
    first = next((m for m in (image, volume, partition, position) if m is not None), None)
    if first is None:
        raise ValueError("global_masks needs metadata, got only None")
    device = torch.as_tensor(first).device
    n = None

    def vec(x, name):
        nonlocal n
        t = _metadata_vector(x, name, n, device)
        n = t.shape[0]
        return t

    if strategy == "PCL":
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
            raise ValueError(f"PCL threshold must be a number > 0, got {threshold!r}")
        pos_vec = vec(position, "position").to(torch.float64)
        others = ~torch.eye(n, dtype=torch.bool, device=device)
        positives = ((pos_vec[:, None] - pos_vec[None, :]).abs() < threshold) & others
        return positives, others

    img = vec(image, "image")
    others = ~torch.eye(n, dtype=torch.bool, device=device)
    same_image = (img[:, None] == img[None, :]) & others
    if strategy == "GR":
        return same_image, others

    part = vec(partition, "partition")
    if (part < 0).any():
        raise ValueError(f"{strategy} needs slices drawn by partition (partition >= 0); got partition -1")
    other_partition = part[:, None] != part[None, :]
    if strategy == "GD-":
        return same_image, other_partition
    vol = vec(volume, "volume")
    same_partition_other_volume = (part[:, None] == part[None, :]) & (vol[:, None] != vol[None, :])
    return same_image | same_partition_other_volume, other_partition


def _metadata(batch_or_metadata: Any) -> dict[str, Any]:
    names = ("image", "volume", "partition", "position")
    if isinstance(batch_or_metadata, Mapping):
        return {k: batch_or_metadata.get(k) for k in names}
    if all(hasattr(batch_or_metadata, k) for k in names):
        return {k: getattr(batch_or_metadata, k) for k in names}
    raise TypeError(
        "batch_or_metadata must be a Batch (or any object with image/volume/partition/position attributes) "
        f"or a mapping with those keys, got {type(batch_or_metadata).__name__}"
    )


def global_loss(
    z: torch.Tensor,
    batch_or_metadata: Any,
    strategy: str,
    temperature: float = 0.1,
    threshold: float = 0.1,
) -> torch.Tensor:
    """Global contrastive loss of ``strategy`` over embeddings ``z: (N, D)`` of a batch's ``N`` views.

    ``batch_or_metadata``: a :class:`glcl_core.batch.Batch` or a mapping with ``(N,)`` ``image``, ``volume``,
    ``partition``, ``position``. Uses the reduction of :data:`GLOBAL_REDUCTION`.
    """
    _check_strategy(strategy, GLOBAL_STRATEGIES, "global")
    meta = _metadata(batch_or_metadata)
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z must be (N, D), got {getattr(z, 'shape', type(z).__name__)}")
    meta = {k: (None if v is None else torch.as_tensor(v).to(z.device)) for k, v in meta.items()}
    for k, v in meta.items():
        if v is not None and v.shape[:1] != z.shape[:1]:
            raise ValueError(f"{k} has {v.shape[0] if v.dim() else 0} entries but z has {z.shape[0]} embeddings")
    positives, negatives = global_masks(strategy, **meta, threshold=threshold)
    return masked_info_nce(z, positives, negatives, temperature, GLOBAL_REDUCTION[strategy])


# ----------------------------------------------------------------------------------------------------------------
# Local strategies
# ----------------------------------------------------------------------------------------------------------------
def local_masks(
    strategy: str,
    image: torch.Tensor,
    volume: torch.Tensor,
    partition: torch.Tensor,
    n_regions: int,
    *,
    n_negatives: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[BlockMask, BlockMask]:
    """Block masks of a local strategy: one block per slice, ``q = view * n_regions + region`` inside a block.

    Args:
        strategy: ``"LR"`` or ``"LD"``.
        image, volume, partition: ``(B,)`` metadata of the ``B`` slices (each seen in 2 views).
        n_regions: regions per feature map (13 sparse, grid size dense).
        n_negatives: negatives per anchor counted over both views (so ``n_negatives / 2`` other regions, each in
            both views); ``None`` = every other region. Drawn per region from ``generator`` (a fixed seed if None),
            the same regions for every slice, as in the official code.

    Returns:
        ``positives, negatives`` as :class:`BlockMask` (``outer (B, B)``, ``inner (2R, 2R)``); ``.to_dense()``
        gives the ``(2BR, 2BR)`` matrix. Self pairs are left in ``positives`` (same region, same view, same slice):
        the kernel always drops ``i == p``.
    """
    _check_strategy(strategy, LOCAL_STRATEGIES, "local")
    img = _metadata_vector(image, "image", None, None)
    device = img.device
    b = img.shape[0]
    r = int(n_regions)
    if r < 2:
        raise ValueError(f"the local loss needs at least 2 regions per map, got {n_regions}")

    same_image = img[:, None] == img[None, :]
    outer_pos = same_image
    if strategy == "LD":
        vol = _metadata_vector(volume, "volume", b, device)
        part = _metadata_vector(partition, "partition", b, device)
        if (part < 0).any():
            raise ValueError("LD needs slices drawn by partition (partition >= 0); got partition -1")
        outer_pos = same_image | ((part[:, None] == part[None, :]) & (vol[:, None] != vol[None, :]))

    region = torch.arange(2 * r, device=device) % r  # q -> region, for both views
    same_region = region[:, None] == region[None, :]
    if n_negatives is None:
        inner_neg = ~same_region
    else:
        if isinstance(n_negatives, bool) or not isinstance(n_negatives, int) or n_negatives < 2 or n_negatives % 2:
            raise ValueError(
                "n_negatives counts negatives per anchor over both views (official: 5 regions x 2 views = 10); "
                f"it must be an even int >= 2, got {n_negatives!r}"
            )
        k = n_negatives // 2
        if k > r - 1:
            raise ValueError(f"n_negatives={n_negatives} needs {k} other regions, but a map has only {r - 1}")
        if generator is None:
            generator = torch.Generator().manual_seed(_DEFAULT_SEED)
        scores = torch.rand((r, r), generator=generator, device=generator.device)
        scores.fill_diagonal_(2.0)  # never draw the region itself
        chosen = scores.topk(k, dim=1, largest=False).indices.to(device)  # (R, k) other regions per region
        region_neg = torch.zeros(r, r, dtype=torch.bool, device=device)
        region_neg[torch.arange(r, device=device)[:, None], chosen] = True
        inner_neg = region_neg.repeat(2, 2)  # both views of the chosen regions
    return BlockMask(outer_pos, same_region), BlockMask(same_image, inner_neg)


def local_loss(
    f1: torch.Tensor,
    f2: torch.Tensor,
    image: torch.Tensor,
    volume: torch.Tensor,
    partition: torch.Tensor,
    strategy: str = "LR",
    form: str = "sparse",
    region_size: int = 3,
    pooling: str = "flatten",
    n_negatives: int | None = None,
    temperature: float = 0.1,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "pairs",
) -> torch.Tensor:
    """Local contrastive loss over decoder feature maps of two pixel-aligned views.

    Args:
        f1, f2: ``(B, C, h, w)`` maps (after g2) of view 1 and view 2 of the same ``B`` slices.
        image, volume, partition: ``(B,)`` metadata of those slices.
        strategy: ``"LR"`` or ``"LD"``.
        form: ``"sparse"`` (13 fixed regions) or ``"dense"`` (stride-K grid over the whole map).
        region_size: K.
        pooling: ``"flatten"`` (``C*K*K`` per region, paper) or ``"mean"`` (``C``).
        n_negatives: negatives per anchor over both views; ``None`` = 10 for sparse, every other region for dense.
        temperature: t.
        chunk_size: anchor rows per similarity piece (memory bound); ``None`` = about 16M similarities per piece.
        generator: draws the sampled negatives (fixed draw if None).
        reduction: ``"pairs"`` (paper) or ``"anchors"``.

    Returns:
        Scalar loss (float32).
    """
    _check_strategy(strategy, LOCAL_STRATEGIES, "local")
    if form not in LOCAL_FORMS:
        raise ValueError(f"unknown local form {form!r}; valid: {', '.join(LOCAL_FORMS)}")
    for name, f in (("f1", f1), ("f2", f2)):
        if not isinstance(f, torch.Tensor) or f.dim() != 4:
            raise ValueError(f"{name} must be (B, C, h, w), got {getattr(f, 'shape', type(f).__name__)}")
    if f1.shape != f2.shape:
        raise ValueError(f"f1 and f2 must have the same shape, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    b, _, h, w = f1.shape
    img = _metadata_vector(image, "image", b, f1.device)
    vol = _metadata_vector(volume, "volume", b, f1.device) if volume is not None else None
    part = _metadata_vector(partition, "partition", b, f1.device) if partition is not None else None

    corners = sparse_region_corners(h, w, region_size) if form == "sparse" else None
    regions = torch.cat(
        [pool_regions(f1, region_size, pooling, corners), pool_regions(f2, region_size, pooling, corners)], dim=1
    )  # (B, 2R, D): view 1 regions, then view 2 regions
    n_regions = regions.shape[1] // 2
    if n_negatives is None and form == "sparse":
        n_negatives = SPARSE_NEGATIVES
    positives, negatives = local_masks(
        strategy, img, vol, part, n_regions, n_negatives=n_negatives, generator=generator
    )
    if chunk_size is None:
        chunk_size = max(1, _DENSE_PIECE // regions.shape[1])
    return masked_info_nce(regions, positives, negatives, temperature, reduction, chunk_size=chunk_size)


def local_region_corners(height: int, width: int, form: str = "sparse", region_size: int = 3) -> torch.Tensor:
    """Top-left corners ``(R, 2)`` of the regions a local ``form`` uses (for plots): region ``r`` is row ``r``."""
    if form not in LOCAL_FORMS:
        raise ValueError(f"unknown local form {form!r}; valid: {', '.join(LOCAL_FORMS)}")
    if form == "sparse":
        return sparse_region_corners(height, width, region_size)
    return grid_region_corners(height, width, region_size)
