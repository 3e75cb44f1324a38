"""Region geometry of the local loss: where the K x K regions of a feature map sit, and how they are pooled.
The paper's 13 sparse regions (and the official table of their hand-picked negatives), the dense grid, pooling.

Knows nothing of views, slices or strategies: it turns feature maps ``(B, C, h, w)`` into region vectors
``(B, R, D)`` and gives the corners of the regions a local form uses (``"sparse"`` or ``"dense"``).
"""
from __future__ import annotations

from typing import Sequence

import torch

POOLINGS = ("flatten", "mean")
LOCAL_FORMS = ("sparse", "dense")

__all__ = [
    "POOLINGS",
    "LOCAL_FORMS",
    "SPARSE_LATTICE",
    "SPARSE_EXTRA_LATTICE",
    "OFFICIAL_SPARSE_NEGATIVES",
    "OFFICIAL_SPARSE_NEGATIVES_1X1",
    "official_negative_regions",
    "sparse_region_corners",
    "grid_region_corners",
    "pool_regions",
    "local_region_corners",
]


# ----------------------------------------------------------------------------------------------------------------
# Regions of a feature map (local loss)
# ----------------------------------------------------------------------------------------------------------------
# The sparse regions as lattice positions (fy, fx) in quarters of the span (span = side - K - 1): corner
# = f * span // 4, so one unit q = 11 on a 48x48 map with K = 3. Region r is SPARSE_LATTICE[r] (the official order).
SPARSE_LATTICE = (
    (0, 0), (0, 2), (0, 4), (2, 0), (2, 2), (2, 4), (4, 0), (4, 2), (4, 4), (1, 1), (1, 3), (3, 1), (3, 3)
)
# Four positions the official 3x3 negative table uses that are not among the 13 regions: pooled as regions 13..16,
# only ever negatives (never anchors, never positives).
SPARSE_EXTRA_LATTICE = ((1, 2), (2, 1), (2, 3), (3, 2))
# The official code's hand-picked negatives of each region (3x3 regions; lattice positions, in the code's order,
# which matters: its L^D keeps only the first 4 of each row). Checked against the official models.py
# (decoder_pretrain_net, 13 regions, local_reg_size=1).
OFFICIAL_SPARSE_NEGATIVES = (
    ((0, 2), (1, 1), (1, 2), (2, 0), (2, 1)),
    ((0, 0), (0, 4), (1, 1), (1, 3), (2, 2)),
    ((0, 2), (1, 2), (1, 3), (2, 3), (2, 4)),
    ((0, 0), (1, 1), (2, 2), (4, 0), (3, 1)),
    ((1, 1), (1, 3), (3, 1), (3, 3), (2, 0)),
    ((0, 4), (2, 2), (4, 4), (1, 3), (3, 3)),
    ((2, 0), (2, 1), (4, 2), (3, 1), (3, 2)),
    ((2, 2), (4, 0), (4, 4), (3, 1), (3, 3)),
    ((2, 3), (2, 4), (4, 2), (3, 3), (3, 2)),
    ((0, 0), (0, 2), (2, 0), (2, 2), (1, 3)),
    ((0, 2), (0, 4), (1, 1), (2, 2), (2, 4)),
    ((2, 0), (2, 2), (4, 0), (4, 2), (3, 3)),
    ((2, 2), (2, 4), (4, 2), (4, 4), (3, 1)),
)
# The official code's second table, for 1x1 regions (local_reg_size=0); all of its positions are among the 13.
OFFICIAL_SPARSE_NEGATIVES_1X1 = (
    ((0, 2), (2, 0), (2, 2), (1, 1), (1, 3)),
    ((0, 0), (0, 4), (2, 2), (1, 1), (1, 3)),
    ((0, 2), (2, 2), (2, 4), (3, 1), (1, 3)),
    ((0, 0), (2, 2), (4, 0), (1, 1), (3, 1)),
    ((1, 1), (1, 3), (3, 1), (3, 3), (2, 0)),
    ((0, 4), (2, 2), (4, 4), (1, 3), (3, 3)),
    ((2, 0), (2, 2), (4, 2), (3, 1), (1, 1)),
    ((2, 2), (4, 0), (4, 4), (3, 1), (3, 3)),
    ((2, 2), (2, 4), (4, 2), (3, 3), (3, 1)),
    ((0, 0), (0, 2), (2, 0), (2, 2), (1, 3)),
    ((0, 2), (0, 4), (2, 2), (2, 4), (3, 3)),
    ((2, 0), (2, 2), (4, 0), (0, 2), (1, 1)),
    ((2, 2), (2, 4), (4, 2), (4, 4), (1, 3)),
)


def official_negative_regions(region_size: int = 3) -> torch.Tensor:
    """The official hand-picked negatives as region indices: ``(13, 5)`` int64, row ``r`` = the negatives of region
    ``r`` in the official order, indices into the 17 regions of ``sparse_region_corners(..., extras=True)``
    (0..12 the sparse regions, 13..16 the extra positions of :data:`SPARSE_EXTRA_LATTICE`).

    ``region_size == 1`` gives the official 1x1 table (only indices < 13); any other size the 3x3 table (the
    official code has tables for 1x1 and 3x3 regions only).
    """
    table = OFFICIAL_SPARSE_NEGATIVES_1X1 if int(region_size) == 1 else OFFICIAL_SPARSE_NEGATIVES
    position = {pos: i for i, pos in enumerate(SPARSE_LATTICE + SPARSE_EXTRA_LATTICE)}
    return torch.tensor([[position[pos] for pos in row] for row in table], dtype=torch.long)


def sparse_region_corners(height: int, width: int, region_size: int = 3, extras: bool = False) -> torch.Tensor:
    """Top-left corners ``(13, 2)`` (row, col) of the paper's 13 fixed regions; ``(17, 2)`` with ``extras=True``.

    A 3x3 lattice at fractions {0, 1/2, 1} plus a 2x2 lattice at {1/4, 3/4} of the span ``side - K - 1`` (the
    official code's 44 for a 48x48 map with K = 3), i.e. corners from {0, 11, 22, 33, 44} on a 48x48 map: region
    ``r`` sits at ``SPARSE_LATTICE[r] * span // 4``. ``extras=True`` appends the 4 positions of
    :data:`SPARSE_EXTRA_LATTICE` (rows 13..16), which the official negative table uses as negatives only.
    With K = 1 the official code's span is ``side - 1``, one more than here (a small shift of the far corners).
    """
    spans = []
    for side, name in ((height, "height"), (width, "width")):
        span = side - region_size - 1
        if region_size < 1 or span < 4:
            raise ValueError(
                f"a {name} of {side} is too small for 13 distinct {region_size}x{region_size} regions "
                f"(needs at least region_size + 5 = {region_size + 5})"
            )
        spans.append(span)
    sy, sx = spans
    lattice = SPARSE_LATTICE + (SPARSE_EXTRA_LATTICE if extras else ())
    return torch.tensor([[fy * sy // 4, fx * sx // 4] for fy, fx in lattice], dtype=torch.long)


def grid_region_corners(height: int, width: int, region_size: int = 1) -> torch.Tensor:
    """Top-left corners ``(R, 2)`` of the dense grid: K x K regions with stride K, row-major (crops the remainder)."""
    if region_size < 1 or region_size > min(height, width):
        raise ValueError(f"region_size must be in [1, {min(height, width)}], got {region_size}")
    ys = torch.arange(height // region_size) * region_size
    xs = torch.arange(width // region_size) * region_size
    return torch.cartesian_prod(ys, xs)


def pool_regions(
    f: torch.Tensor, region_size: int, pooling: str = "flatten", corners: torch.Tensor | Sequence | None = None
) -> torch.Tensor:
    """Region vectors of feature maps.

    Args:
        f: ``(B, C, h, w)``.
        region_size: K.
        pooling: ``"flatten"`` -> ``C*K*K`` per region (channel-major, like ``f[b, :, y:y+K, x:x+K].reshape(-1)``),
            ``"mean"`` -> ``C``.
        corners: ``(R, 2)`` top-left corners; ``None`` = the dense grid (stride K, row-major), in the order of
            :func:`grid_region_corners`.

    Returns:
        ``(B, R, C*K*K)`` or ``(B, R, C)``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if f.dim() != 4:
        raise ValueError(f"feature maps must be (B, C, h, w), got {tuple(f.shape)}")
    b, c, h, w = f.shape
    k = int(region_size)
    if k < 1 or k > min(h, w):
        raise ValueError(f"region_size must be in [1, {min(h, w)}] for {h}x{w} maps, got {region_size}")
    if corners is None:
        gh, gw = h // k, w // k
        tiles = f[:, :, : gh * k, : gw * k].reshape(b, c, gh, k, gw, k)
        if pooling == "mean":
            return tiles.mean(dim=(3, 5)).flatten(2).transpose(1, 2)  # (B, R, C)
        return tiles.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * k * k)
    corners = torch.as_tensor(corners, dtype=torch.long).reshape(-1, 2)
    if (corners < 0).any() or (corners[:, 0] + k > h).any() or (corners[:, 1] + k > w).any():
        raise ValueError(f"region corners must keep {k}x{k} regions inside the {h}x{w} map")
    offsets = torch.arange(k)
    ys = (corners[:, 0, None] + offsets).to(f.device)[:, :, None]  # (R, K, 1)
    xs = (corners[:, 1, None] + offsets).to(f.device)[:, None, :]  # (R, 1, K)
    # one gather (and one scatter in backward) rather than R slices, each with a full-size gradient
    tiles = f[:, :, ys, xs].transpose(1, 2)  # (B, R, C, K, K)
    if pooling == "mean":
        return tiles.mean(dim=(3, 4))
    return tiles.flatten(2)


def local_region_corners(
    height: int, width: int, form: str = "sparse", region_size: int = 3, extras: bool = False
) -> torch.Tensor:
    """Top-left corners ``(R, 2)`` of the regions a local ``form`` uses (for plots): region ``r`` is row ``r``.

    ``extras=True`` (sparse only) appends the 4 negative-only positions of the official table (rows 13..16), so
    ``local_region_corners(h, w, extras=True)[official_negative_regions()]`` are the official negatives' corners.
    """
    if form not in LOCAL_FORMS:
        raise ValueError(f"unknown local form {form!r}; valid: {', '.join(LOCAL_FORMS)}")
    if form == "sparse":
        return sparse_region_corners(height, width, region_size, extras=extras)
    if extras:
        raise ValueError("extras (the official negative-only positions) exist for the sparse form only")
    return grid_region_corners(height, width, region_size)
