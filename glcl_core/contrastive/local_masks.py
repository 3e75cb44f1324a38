"""Local strategies (L^R, L^D) as block masks or per-pair indices over region embeddings, and the local loss.
Pools the regions of two views' decoder maps and hands them with the masks to the kernel (mask or per-pair form).

Local (decoder block + g2 feature maps of two intensity-only views, pixel-aligned; a region is a K x K patch):

* ``LR``: positive = the same region of the same image in the other view; negatives = other regions of the same
  image, both views.
* ``LD`` (``ld_pairs="official"``, the official code's form): anchors in view 1 only; positives = the same region
  in view 2 and in view 1 of same-partition slices of other volumes; each pair's negatives = listed regions of the
  pair's two maps (per-pair negatives, :func:`local_ld_pairs` + :func:`~glcl_core.contrastive.kernel.pair_info_nce`).
  ``ld_pairs="symmetric"``: anchors in both views, the same region of partners in both views also positive,
  negatives per anchor from its own image (mask kernel).

``form="sparse"``: the paper's 13 fixed regions; negatives (``negatives``): ``"official"`` (default) = the official
code's hand-picked table, 5 regions per region x 2 views = 10 (L^D: the first 4 per map), 4 of whose positions are
extra, negative-only regions; ``"random"`` = ``n_negatives`` from a fixed random draw of regions. ``form="dense"``:
every region of a stride-K grid, every other region of the image a negative (``"all"``); computed block by block
(one block per image) with bounded memory. See :func:`local_loss` for the remaining deviations.

Region geometry: :mod:`glcl_core.contrastive.regions`; negatives tables: :mod:`glcl_core.contrastive.local_negatives`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from glcl_core.contrastive.global_masks import _check_strategy, _metadata_vector
from glcl_core.contrastive.kernel import BlockMask, masked_info_nce, pair_info_nce
from glcl_core.contrastive.local_negatives import (
    LD_NEGATIVE_REGIONS,
    LOCAL_NEGATIVES,
    _negative_table,
    resolve_local_negatives,
)
from glcl_core.contrastive.regions import SPARSE_LATTICE, grid_region_corners, pool_regions, sparse_region_corners

LOCAL_STRATEGIES = ("LR", "LD")
LD_PAIRS = ("official", "symmetric")  # official L^D (view-1 anchors, per-pair negatives) | mask-kernel form
_DENSE_PIECE = 1 << 24  # similarity entries per piece (~64 MB float32) when chunk_size is not given

__all__ = [
    "LOCAL_STRATEGIES",
    "LD_PAIRS",
    "local_masks",
    "local_ld_pairs",
    "local_loss",
]


def _ld_partners(image: torch.Tensor, volume: Any, partition: Any) -> torch.Tensor:
    """``(B, B)`` bool: same partition, other volume (the L^D partners of each slice)."""
    b, device = image.shape[0], image.device
    vol = _metadata_vector(volume, "volume", b, device)
    part = _metadata_vector(partition, "partition", b, device)
    if (part < 0).any():
        raise ValueError("LD needs slices drawn by partition (partition >= 0); got partition -1")
    return (part[:, None] == part[None, :]) & (vol[:, None] != vol[None, :])


def _block_masks(strategy: str, img: torch.Tensor, volume: Any, partition: Any, table: torch.Tensor,
                 n_regions: int, n_total: int) -> tuple[BlockMask, BlockMask]:
    device = img.device
    same_image = img[:, None] == img[None, :]
    outer_pos = same_image
    if strategy == "LD":
        outer_pos = same_image | _ld_partners(img, volume, partition)
    region = torch.arange(2 * n_total, device=device) % n_total  # q -> region, for both views
    same_region = region[:, None] == region[None, :]
    inner_pos = same_region & (region < n_regions)[:, None]  # negative-only positions have no positives
    region_neg = torch.zeros(n_total, n_total, dtype=torch.bool, device=device)
    region_neg[torch.arange(n_regions, device=device)[:, None], table.to(device)] = True
    inner_neg = region_neg.repeat(2, 2)  # both views of the listed regions
    return BlockMask(outer_pos, inner_pos), BlockMask(same_image, inner_neg)


def local_masks(
    strategy: str,
    image: torch.Tensor,
    volume: torch.Tensor,
    partition: torch.Tensor,
    n_regions: int,
    *,
    n_negatives: int | None = None,
    generator: torch.Generator | None = None,
    negatives: str | None = None,
    region_size: int = 3,
    ld_negative_regions: int = LD_NEGATIVE_REGIONS,
) -> tuple[BlockMask, BlockMask]:
    """Block masks of a local strategy in its mask (kernel) form: one block per slice, ``q = view * n_total +
    region`` inside a block.

    This is the exact official L^R and the *symmetric* L^D (see :func:`local_loss`); the official L^D has
    per-pair negatives and is built by :func:`local_ld_pairs` instead.

    Args:
        strategy: ``"LR"`` or ``"LD"``.
        image, volume, partition: ``(B,)`` metadata of the ``B`` slices (each seen in 2 views).
        n_regions: anchor regions per feature map (13 sparse, grid size dense).
        n_negatives: with ``negatives="random"``: negatives per anchor counted over both views (``n_negatives / 2``
            other regions, each in both views; default 10), drawn per region from ``generator`` (a fixed seed if
            None), the same regions for every slice.
        negatives: ``"official"`` (the hand-picked table; ``n_regions`` must be 13), ``"random"`` or ``"all"``
            (every other region). ``None``: ``"random"`` if ``n_negatives`` is given, else ``"all"``.
        region_size: selects the official table (1x1 or 3x3 regions).
        ld_negative_regions: LD with the official table: how many of the 5 listed regions are used (official: 4).

    Returns:
        ``positives, negatives`` as :class:`BlockMask` (``outer (B, B)``, ``inner (2T, 2T)``) with ``T =
        n_regions`` except for the official 3x3 table, where ``T = 17``: the 13 regions, then the 4 negative-only
        positions (:data:`~glcl_core.contrastive.regions.SPARSE_EXTRA_LATTICE`), which have no positives (so are
        never anchors) and are negatives only. ``.to_dense()`` gives the ``(2BT, 2BT)`` matrix. Self pairs are left in
        ``positives`` (same region, same view, same slice): the kernel always drops ``i == p``.
    """
    _check_strategy(strategy, LOCAL_STRATEGIES, "local")
    img = _metadata_vector(image, "image", None, None)
    r = int(n_regions)
    if r < 2:
        raise ValueError(f"the local loss needs at least 2 regions per map, got {n_regions}")
    if negatives is None:
        negatives = "all" if n_negatives is None else "random"
    elif negatives not in LOCAL_NEGATIVES:
        raise ValueError(f"unknown local negatives {negatives!r}; valid: {', '.join(LOCAL_NEGATIVES)}")
    elif negatives != "random" and n_negatives is not None:
        raise ValueError(f"n_negatives={n_negatives!r} only applies to negatives='random', got {negatives!r}")
    table, n_total = _negative_table(strategy, r, negatives, n_negatives, generator, region_size,
                                     ld_negative_regions, img.device)
    return _block_masks(strategy, img, volume, partition, table, r, n_total)


def local_ld_pairs(
    image: torch.Tensor, volume: torch.Tensor, partition: torch.Tensor, table: torch.Tensor, n_total: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official L^D as index triples over region embeddings laid out ``(B, 2, T)`` and flattened: embedding
    ``(b * 2 + view) * T + region`` (view 0 = view 1 of the paper).

    For every slice ``a`` and region ``r < R`` (``R = table.shape[0]``) the anchor is region ``r`` of ``a`` in
    view 1 only, with the positive pairs

    * ``(a, view 1) -> (a, view 2)``: negatives = the regions ``table[r]`` of ``a`` in view 1 and in view 2;
    * ``(a, view 1) -> (p, view 1)`` for every partner ``p`` (same partition, other volume): negatives = the
      regions ``table[r]`` of ``a`` in view 1 and of ``p`` in view 1.

    Returns:
        ``anchor (P,)``, ``key (P,)``, ``negatives (P, 2k)`` int64 for
        :func:`~glcl_core.contrastive.kernel.pair_info_nce`.
    """
    img = _metadata_vector(image, "image", None, None)
    device = img.device
    b = img.shape[0]
    table = table.to(device)
    r, k = table.shape
    t = int(n_total)

    def index(slices: torch.Tensor, view: int, regions: torch.Tensor) -> torch.Tensor:
        return (slices * 2 + view) * t + regions

    regions = torch.arange(r, device=device)
    # own second view: (B, R) pairs
    own = torch.arange(b, device=device)[:, None].expand(b, r)
    reg = regions.expand(b, r)
    anchor_own = index(own, 0, reg)
    key_own = index(own, 1, reg)
    neg_own = torch.cat([index(own[..., None], 0, table[reg]), index(own[..., None], 1, table[reg])], dim=-1)
    # partners' first view: (Q, R) pairs for the Q (slice, partner) pairs
    pa, pb = _ld_partners(img, volume, partition).nonzero(as_tuple=True)
    q = pa.shape[0]
    pa, pb, reg_q = pa[:, None].expand(q, r), pb[:, None].expand(q, r), regions.expand(q, r)
    anchor_p = index(pa, 0, reg_q)
    key_p = index(pb, 0, reg_q)
    neg_p = torch.cat([index(pa[..., None], 0, table[reg_q]), index(pb[..., None], 0, table[reg_q])], dim=-1)
    anchor = torch.cat([anchor_own.reshape(-1), anchor_p.reshape(-1)])
    key = torch.cat([key_own.reshape(-1), key_p.reshape(-1)])
    negatives = torch.cat([neg_own.reshape(-1, 2 * k), neg_p.reshape(-1, 2 * k)])
    return anchor, key, negatives


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
    *,
    negatives: str | None = None,
    ld_pairs: str = "official",
    ld_negative_regions: int = LD_NEGATIVE_REGIONS,
    region_projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Local contrastive loss over decoder feature maps of two pixel-aligned views.

    Defaults follow the official code (``decoder_pretrain_net`` in its ``models.py``, 13 regions of 3x3):

    * sparse regions, negatives from the hand-picked table
      (:data:`~glcl_core.contrastive.regions.OFFICIAL_SPARSE_NEGATIVES`); its 4 positions outside the 13 regions
      are pooled as extra regions that are only negatives;
    * L^R: every region of both views is an anchor; its one positive is the same region in the other view; its
      negatives are its 5 listed regions in both views (10). Per-anchor and per-pair negatives coincide here, so
      the mask kernel computes it exactly;
    * L^D (``ld_pairs="official"``, sparse form): anchors in view 1 only; positives: the same region in view 2
      of the same slice and in view 1 of every same-partition slice of another volume; each *pair* has its own
      8 negatives, the first 4 listed regions (``ld_negative_regions``) in each of the pair's two maps (see
      :func:`local_ld_pairs`), computed by :func:`~glcl_core.contrastive.kernel.pair_info_nce`;
    * ``region_projection``: the official code's learned, shared, bias-free linear map of every flattened region
      to 128 values (:meth:`glcl_core.models.LocalHead.project_regions`, which the training loop passes);
      ``None`` (this function's default) compares the pooled regions themselves (the code's switch turned off).

    Remaining deviations from the official code: the loss is the mean over positive pairs (the code divides its
    sum by the number of regions and by ``2B``, i.e. the same for L^R and 3/2 of the mean for its L^D with 3
    volumes: a constant factor); the official L^D pairs each slice with the slices 4 and 8 places later (modulo
    12) in its batch of exactly 3 volumes x 4 partitions, i.e. the same-partition slices of the two other
    volumes; here a slice is paired with those of every other volume in the batch (the same set for 3 volumes).
    The official code flattens regions channels-last, here channel-major: a fixed permutation of a flattened
    region, which changes no similarity without a projection and only reorders the projection's weights with one.
    For K = 1 the official corners use a span one pixel longer (see
    :func:`~glcl_core.contrastive.regions.sparse_region_corners`); its 1x1 negative table is used.

    Options: ``negatives="random"`` (``n_negatives`` per anchor over both views, a fixed random draw of
    ``n_negatives / 2`` regions per region; for the official L^D, per pair over its two maps) or ``"all"`` (every
    other region; the dense default). ``ld_pairs="symmetric"``: L^D in the mask kernel with
    anchors in both views, positives = the same region in the other view and in both views of partners, and
    per-*anchor* negatives = the listed regions of the anchor's own slice (both views): this differs from the
    official L^D in the anchor views, in the partners' view-2 positives and in the partner's negatives. The dense
    form (not in the official code) always uses the symmetric L^D, since its per-pair form would be too large.

    Args:
        f1, f2: ``(B, C, h, w)`` maps (after g2) of view 1 and view 2 of the same ``B`` slices.
        image, volume, partition: ``(B,)`` metadata of those slices (volume, partition: LD only).
        strategy: ``"LR"`` or ``"LD"``.
        form: ``"sparse"`` (13 fixed regions) or ``"dense"`` (stride-K grid over the whole map).
        region_size: K.
        pooling: ``"flatten"`` (``C*K*K`` per region, paper) or ``"mean"`` (``C``).
        n_negatives: negatives per anchor over both views for ``negatives="random"`` (default 10).
        temperature: t.
        chunk_size: anchor rows per similarity piece (mask kernel; memory bound); ``None`` = about 16M
            similarities per piece.
        generator: draws the random negatives (fixed draw if None).
        reduction: ``"pairs"`` (paper) or ``"anchors"``.
        negatives: ``"official"``, ``"random"`` or ``"all"``; ``None``: see :func:`resolve_local_negatives`.
        ld_pairs: ``"official"`` or ``"symmetric"`` (LD only; the dense form is always symmetric).
        ld_negative_regions: LD with the official table: listed regions used per map (official 4 of 5).
        region_projection: maps ``(B, 2T, D_in)`` pooled regions to ``(B, 2T, D_out)``, ``D_in = C*K*K``
            (flatten) or ``C`` (mean); ``None`` = no projection. ``T`` = regions pooled per map: 17 with the
            official 3x3 table (13 + 4 negative-only), 13 otherwise for sparse, the grid size for dense; view 1's
            regions come first.

    Returns:
        Scalar loss (float32; float64 for float64 maps).
    """
    _check_strategy(strategy, LOCAL_STRATEGIES, "local")
    negatives = resolve_local_negatives(form, negatives, n_negatives)
    if ld_pairs not in LD_PAIRS:
        raise ValueError(f"unknown ld_pairs {ld_pairs!r}; valid: {', '.join(LD_PAIRS)}")
    for name, f in (("f1", f1), ("f2", f2)):
        if not isinstance(f, torch.Tensor) or f.dim() != 4:
            raise ValueError(f"{name} must be (B, C, h, w), got {getattr(f, 'shape', type(f).__name__)}")
    if f1.shape != f2.shape:
        raise ValueError(f"f1 and f2 must have the same shape, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    b, _, h, w = f1.shape
    img = _metadata_vector(image, "image", b, f1.device)
    vol = _metadata_vector(volume, "volume", b, f1.device) if volume is not None else None
    part = _metadata_vector(partition, "partition", b, f1.device) if partition is not None else None

    if form == "sparse":
        n_regions = len(SPARSE_LATTICE)
    else:
        n_regions = len(grid_region_corners(h, w, region_size))
    if n_regions < 2:
        raise ValueError(f"the local loss needs at least 2 regions per map, got {n_regions}")
    table, n_total = _negative_table(strategy, n_regions, negatives, n_negatives, generator, region_size,
                                     ld_negative_regions, f1.device)
    corners = sparse_region_corners(h, w, region_size, extras=n_total > n_regions) if form == "sparse" else None
    regions = torch.cat(
        [pool_regions(f1, region_size, pooling, corners), pool_regions(f2, region_size, pooling, corners)], dim=1
    )  # (B, 2T, D): view 1 regions, then view 2 regions
    if region_projection is not None:
        regions = region_projection(regions)
        if not isinstance(regions, torch.Tensor) or regions.dim() != 3 or regions.shape[:2] != (b, 2 * n_total):
            raise ValueError(f"region_projection must map (B, 2T, D_in) to (B, 2T, D_out), got "
                             f"{getattr(regions, 'shape', type(regions).__name__)}")
    if strategy == "LD" and ld_pairs == "official" and form == "sparse":
        anchor, key, pair_negatives = local_ld_pairs(img, vol, part, table, n_total)
        return pair_info_nce(regions.reshape(b * 2 * n_total, -1), anchor, key, pair_negatives, temperature,
                             reduction)
    positives, negative_mask = _block_masks(strategy, img, vol, part, table, n_regions, n_total)
    if chunk_size is None:
        chunk_size = max(1, _DENSE_PIECE // regions.shape[1])
    return masked_info_nce(regions, positives, negative_mask, temperature, reduction, chunk_size=chunk_size)
