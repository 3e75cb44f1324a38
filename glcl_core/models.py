"""The GLCL U-Net, the projection heads g1 (global) and g2 (local), and partial weight loading.

Architecture (Chaitanya et al. 2020):

* Encoder: ``len(channels)`` levels, each two 3x3 conv + norm + ReLU, a 2x2 max-pool between levels
  (5 pools for the default 6 levels). Default channels 16/32/64/128/128/128.
* Decoder: ``len(channels) - 1`` blocks. Block ``l`` (1-based) upsamples x2 (bilinear, no weights), applies a
  3x3 conv + norm + ReLU, concatenates the encoder skip of the matching resolution and applies two 3x3
  conv + norm + ReLU. Its channel count mirrors the encoder (defaults: 128, 128, 64, 32, 16), so block 3 gives
  64 channels at 48x48 for a 192x192 input (the layer the local contrastive loss is taken from).
  The official TF code uses a 2x2 conv after the upsampling; a 3x3 conv keeps the padding symmetric in PyTorch.
* Segmentation head: a 1x1 conv to ``n_classes`` logits.

Nothing here names a device: move the model with ``.to(device)``; ``memory_format=torch.channels_last`` works.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

NORMS = ("batch", "instance", "none")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class ConvNormReLU(nn.Sequential):
    """3x3 (or ``kernel_size``) conv, normalisation, ReLU. ``(B, C_in, H, W) -> (B, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", kernel_size: int = 3) -> None:
        super().__init__(
            # The bias is redundant in front of a normalisation layer with its own shift.
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=(norm == "none")),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormReLU`. ``(B, C_in, H, W) -> (B, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(ConvNormReLU(in_channels, out_channels, norm), ConvNormReLU(out_channels, out_channels, norm))


class Encoder(nn.Module):
    """The contracting path: ``levels[k]`` runs at resolution ``H / 2**k``."""

    def __init__(self, in_channels: int, channels: Sequence[int], norm: str = "batch") -> None:
        super().__init__()
        inputs = [in_channels, *channels[:-1]]
        self.levels = nn.ModuleList(DoubleConv(c_in, c_out, norm) for c_in, c_out in zip(inputs, channels))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x: (B, C_in, H, W)`` -> one map per level, ``k``-th ``(B, channels[k], H / 2**k, W / 2**k)``."""
        features = []
        for k, level in enumerate(self.levels):
            if k > 0:
                x = self.pool(x)
            x = level(x)
            features.append(x)
        return features


class DecoderBlock(nn.Module):
    """Upsample x2, conv, concatenate the skip, two 3x3 convs.

    ``x: (B, C_in, h, w)``, ``skip: (B, C_skip, 2h, 2w)`` -> ``(B, C_out, 2h, 2w)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.up_conv = ConvNormReLU(in_channels, out_channels, norm)
        self.convs = DoubleConv(out_channels + skip_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up_conv(x)
        return self.convs(torch.cat([x, skip], dim=1))


def _as_hw(size: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    hw = tuple(int(s) for s in size)
    if len(hw) != 2:
        raise ValueError(f"{what} must be an int or (H, W), got {size!r}")
    return hw  # type: ignore[return-value]


class UNet(nn.Module):
    """The GLCL U-Net with a configurable width (``channels``) and depth (``len(channels)``).

    Args:
        in_channels: input channels (1 for MRI/CT slices).
        n_classes: segmentation classes including background.
        channels: encoder channels per level; the decoder mirrors them.
        img_size: training input size, int or ``(H, W)``; each side must be divisible by ``2**(depth-1)``.
            It fixes :attr:`bottleneck_shape` (needed by the dense global head); the convolutional network
            itself accepts any divisible size.
        norm: ``"batch"`` (papers), ``"instance"`` or ``"none"``.

    Attributes:
        encoder: :class:`Encoder`; ``decoder``: ``nn.ModuleList`` of :class:`DecoderBlock`; ``seg_head``: 1x1 conv.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 4,
        channels: Sequence[int] = (16, 32, 64, 128, 128, 128),
        img_size: int | Sequence[int] = 192,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels (encoder + one decoder block), got {channels}")
        if any(c < 1 for c in channels):
            raise ValueError(f"channels must be positive, got {channels}")
        if in_channels < 1 or n_classes < 1:
            raise ValueError(f"in_channels and n_classes must be >= 1, got {in_channels}, {n_classes}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.channels = channels
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        self.norm = norm
        self.img_hw = _as_hw(img_size, "img_size")
        self._check_size(*self.img_hw, what="img_size")

        self.encoder = Encoder(in_channels, channels, norm)
        depth = len(channels)
        # Block i (0-based) consumes the previous output (channels[depth-1-i]) and the skip of level depth-2-i.
        self.decoder = nn.ModuleList(
            DecoderBlock(channels[depth - 1 - i], channels[depth - 2 - i], channels[depth - 2 - i], norm)
            for i in range(depth - 1)
        )
        self.seg_head = nn.Conv2d(channels[0], n_classes, kernel_size=1)

    # ----------------------------------------------------------------- geometry
    @property
    def depth(self) -> int:
        """Number of encoder levels."""
        return len(self.channels)

    @property
    def n_decoder_blocks(self) -> int:
        return len(self.channels) - 1

    @property
    def size_factor(self) -> int:
        """Input sides must be multiples of this (``2**(depth-1)``)."""
        return 2 ** (len(self.channels) - 1)

    @property
    def config(self) -> dict:
        """Constructor arguments, e.g. to store next to a checkpoint."""
        return {
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "channels": list(self.channels),
            "img_size": list(self.img_hw),
            "norm": self.norm,
        }

    def _check_size(self, h: int, w: int, what: str) -> None:
        f = self.size_factor
        if h % f or w % f or h < f or w < f:
            raise ValueError(
                f"{what} {h}x{w} must be a positive multiple of 2**(depth-1) = {f} on each side "
                f"for a U-Net with {self.depth} levels (channels={self.channels})"
            )

    def _check_level(self, l: int) -> int:
        if not 0 <= int(l) <= self.n_decoder_blocks:
            raise ValueError(f"decoder block index must be in 0..{self.n_decoder_blocks} (0 = bottleneck), got {l}")
        return int(l)

    def decoder_channels(self, l: int) -> int:
        """Channels of the output of decoder block ``l`` (1-based; ``l = 0`` is the bottleneck)."""
        l = self._check_level(l)
        return self.channels[self.depth - 1 - l]

    def feature_shape(self, l: int) -> tuple[int, int]:
        """``(h, w)`` of the output of decoder block ``l`` (1-based; 0 = bottleneck) for ``img_size`` inputs."""
        l = self._check_level(l)
        down = 2 ** (self.depth - 1 - l)
        return self.img_hw[0] // down, self.img_hw[1] // down

    def feature_size(self, l: int) -> int:
        """Side of the (square) output of decoder block ``l``; use :meth:`feature_shape` for non-square inputs."""
        h, w = self.feature_shape(l)
        if h != w:
            raise ValueError(f"img_size {self.img_hw} is not square; use feature_shape({l})")
        return h

    @property
    def bottleneck_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the last encoder level for ``img_size`` inputs, e.g. ``(128, 6, 6)`` for 192."""
        h, w = self.feature_shape(0)
        return self.channels[-1], h, w

    # ------------------------------------------------------------------ forward
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x: (B, C_in, H, W)`` -> encoder maps per level; the last is the bottleneck ``(B, C, H/2**(d-1), .)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self._check_size(int(x.shape[-2]), int(x.shape[-1]), what="input")
        return self.encoder(x)

    def decode(self, features: Sequence[torch.Tensor], n_blocks: int | None = None) -> torch.Tensor:
        """Run the first ``n_blocks`` decoder blocks (all if ``None``; 0 returns the bottleneck).

        ``features``: the list from :meth:`encode`. Returns ``(B, decoder_channels(l), *feature_shape(l))``.
        """
        if len(features) != self.depth:
            raise ValueError(f"expected {self.depth} encoder feature maps, got {len(features)}")
        n = self.n_decoder_blocks if n_blocks is None else self._check_level(n_blocks)
        x = features[-1]
        for i in range(n):
            x = self.decoder[i](x, features[self.depth - 2 - i])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, C_in, H, W)`` -> logits ``(B, n_classes, H, W)``."""
        return self.seg_head(self.decode(self.encode(x)))


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


# ------------------------------------------------------------------------ partial loading
@dataclass
class LoadSummary:
    """What :func:`load_pretrained` copied. Prefixes are module units such as ``encoder.levels.0``, ``decoder.2``."""

    loaded_prefixes: list[str] = field(default_factory=list)
    missing_prefixes: list[str] = field(default_factory=list)
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        loaded = ", ".join(self.loaded_prefixes) or "nothing"
        missing = ", ".join(self.missing_prefixes) or "none"
        return f"loaded {len(self.loaded_keys)} tensors ({loaded}); left fresh: {missing}"


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile wrappers


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _unit(key: str, part: str) -> str:
    """Group a key into its module unit: everything up to the first numeric component (``decoder.2``)."""
    pieces = key.split(".")
    for i, piece in enumerate(pieces[:-1]):
        if piece.isdigit():
            return ".".join(pieces[: i + 1])
    return part


def load_pretrained(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], parts: Iterable[str] = ("encoder",)
) -> LoadSummary:
    """Copy the weights (and norm buffers) of the named top-level parts of ``model`` from ``state_dict``.

    Everything else (e.g. the segmentation head) keeps its current values. Within a part, whole units may be
    absent (a local pre-training checkpoint holds only the first ``l`` decoder blocks): those stay fresh and are
    listed in ``missing_prefixes``. Raises ``ValueError`` for an unknown part, a part with no weights at all in
    ``state_dict``, a unit that is only partly present, keys the model lacks, or a shape mismatch (naming the
    parameter). ``module.`` / ``_orig_mod.`` prefixes (DDP, torch.compile) are ignored.
    """
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    children = dict(model.named_children())
    for part in parts:
        if part not in children:
            raise ValueError(f"unknown part {part!r}; the model has {', '.join(children)}")
    source = {_strip_wrappers(k): v for k, v in state_dict.items()}
    target = model.state_dict()
    summary = LoadSummary()
    selected: dict[str, torch.Tensor] = {}
    for part in parts:
        prefix = part + "."
        model_keys = [k for k in target if k.startswith(prefix)]
        source_keys = [k for k in source if k.startswith(prefix)]
        if not source_keys:
            raise ValueError(f"state dict has no weights for {part!r} (no keys starting with {prefix!r})")
        unexpected = sorted(set(source_keys) - set(model_keys))
        if unexpected:
            raise ValueError(
                f"state dict has {len(unexpected)} {part!r} tensors this model lacks, e.g. {unexpected[0]!r} "
                f"(different depth or architecture?)"
            )
        for k in source_keys:
            if tuple(source[k].shape) != tuple(target[k].shape):
                raise ValueError(
                    f"shape mismatch for {k!r}: checkpoint {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
                )
        units: dict[str, list[str]] = {}
        for k in model_keys:
            units.setdefault(_unit(k, part), []).append(k)
        for unit, keys in units.items():
            present = [k for k in keys if k in source]
            if present and len(present) != len(keys):
                absent = [k for k in keys if k not in source]
                raise ValueError(f"checkpoint holds only part of {unit!r}: {absent[0]!r} is missing")
            if present:
                summary.loaded_prefixes.append(unit)
                summary.loaded_keys.extend(keys)
                selected.update({k: source[k] for k in keys})
            else:
                summary.missing_prefixes.append(unit)
                summary.missing_keys.extend(keys)
    # load_state_dict copies in place, converting device and dtype; strict=False because we load a subset.
    result = model.load_state_dict(selected, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return summary


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
