"""The projection heads of pre-training: g1 (:class:`GlobalHead`, on the encoder's bottleneck) and g2
(:class:`LocalHead`, on a decoder block's output, with the shared linear projection of its pooled regions).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from glcl_core.models.unet import UNet, _as_hw


class GlobalHead(nn.Module):
    """g1: projects the bottleneck ``(B, C, h, w)`` to an embedding ``(B, out_dim)``.

    ``mode="dense"`` (GLCL): flatten ``C*h*w`` -> Linear(hidden) -> ReLU -> Linear(out_dim); needs ``spatial``.
    GLCL's code: hidden 1024, out 128 (its two dense layers have no bias; these have one).
    ``mode="pooled"`` (PCL): global average pool ``(B, C)`` -> Linear(hidden) -> ReLU -> Linear(out_dim); any
    ``h, w``. PCL's code: hidden = C (its bottleneck, 16f), out 512, with biases.

    ``hidden=None``: 1024 for ``"dense"``, ``C = in_channels`` for ``"pooled"``.
    """

    def __init__(
        self,
        in_channels: int,
        spatial: int | Sequence[int] | None = None,
        mode: str = "dense",
        hidden: int | None = None,
        out_dim: int = 128,
    ) -> None:
        super().__init__()
        if mode not in ("dense", "pooled"):
            raise ValueError(f"mode must be 'dense' or 'pooled', got {mode!r}")
        self.mode = mode
        self.in_channels = int(in_channels)
        if mode == "dense":
            if spatial is None:
                raise ValueError("GlobalHead(mode='dense') needs spatial=(h, w) of the bottleneck")
            self.spatial: tuple[int, int] | None = _as_hw(spatial, "spatial")
            in_features = self.in_channels * self.spatial[0] * self.spatial[1]
        else:
            self.spatial = None
            in_features = self.in_channels
        if hidden is None:
            hidden = 1024 if mode == "dense" else self.in_channels
        self.hidden, self.out_dim = int(hidden), int(out_dim)
        self.mlp = nn.Sequential(nn.Linear(in_features, self.hidden), nn.ReLU(inplace=True),
                                 nn.Linear(self.hidden, self.out_dim))

    @classmethod
    def for_unet(cls, model: UNet, mode: str = "dense", hidden: int | None = None, out_dim: int = 128) -> "GlobalHead":
        c, h, w = model.bottleneck_shape
        return cls(c, (h, w), mode=mode, hidden=hidden, out_dim=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, h, w)`` -> ``(B, out_dim)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, h, w), got {tuple(x.shape)}")
        if self.mode == "pooled":
            return self.mlp(x.mean(dim=(2, 3)))
        if tuple(x.shape[-2:]) != self.spatial:
            raise ValueError(
                f"dense GlobalHead was built for {self.spatial[0]}x{self.spatial[1]} maps, got "
                f"{x.shape[-2]}x{x.shape[-1]} (input size differs from img_size?)"
            )
        return self.mlp(x.flatten(1))


LOCAL_PROJECTIONS = ("linear", "none")


class LocalHead(nn.Module):
    """g2 of the local stage, and the projection of its regions. ``forward``: ``(B, C, h, w) -> (B, out_dim, h, w)``.

    ``norm=True`` (default, the official code's g2): 1x1 conv (no bias) -> BatchNorm -> ReLU -> 1x1 conv (no bias).
    ``norm=False``: 1x1 conv -> ReLU -> 1x1 conv, both with a bias (the paper's description, two 1x1 convs; the
    earlier default here). ``hidden`` and ``out_dim`` default to ``in_channels`` (as in the official code).

    :meth:`project_regions`, with ``projection="linear"`` (default, the official code with its default switch on):
    every pooled region, a vector of ``D_in`` values, goes through one learned linear layer shared by all regions,
    views and slices, to ``projection_dim`` (128) values, without bias (as the official dense layer).
    ``D_in = out_dim * K * K`` for ``pooling="flatten"`` (576 for 64 channels and K = 3) and ``out_dim`` for
    ``"mean"``. ``projection="none"``: no layer; regions are compared as pooled. The layer is part of this module,
    so it is trained, saved and loaded with g2.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int | None = None,
        out_dim: int | None = None,
        norm: bool = True,
        projection: str = "linear",
        region_size: int = 3,
        pooling: str = "flatten",
        projection_dim: int = 128,
    ):
        super().__init__()
        hidden = int(hidden or in_channels)
        out_dim = int(out_dim or in_channels)
        if projection not in LOCAL_PROJECTIONS:
            raise ValueError(f"unknown region projection {projection!r}; choose one of {', '.join(LOCAL_PROJECTIONS)}")
        if pooling not in ("flatten", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; choose 'flatten' or 'mean'")
        self.out_dim = out_dim
        self.norm = bool(norm)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1, bias=not norm),
            nn.BatchNorm2d(hidden) if norm else nn.Identity(),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_dim, kernel_size=1, bias=not norm),
        )
        self.region_size, self.pooling = int(region_size), pooling
        self.projection: nn.Linear | None = None
        if projection == "linear":
            in_features = out_dim * self.region_size ** 2 if pooling == "flatten" else out_dim
            self.projection = nn.Linear(in_features, int(projection_dim), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def project_regions(self, regions: torch.Tensor) -> torch.Tensor:
        """``(..., D_in)`` pooled regions -> ``(..., projection_dim)``; the regions themselves without a projection."""
        if self.projection is None:
            return regions
        if regions.shape[-1] != self.projection.in_features:
            raise ValueError(
                f"regions have {regions.shape[-1]} values, the projection expects {self.projection.in_features} "
                f"({self.out_dim} channels, {self.pooling} pooling of {self.region_size}x{self.region_size} regions)"
            )
        return self.projection(regions)
