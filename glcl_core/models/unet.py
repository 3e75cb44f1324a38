"""The GLCL U-Net: encoder, decoder blocks and 1x1 segmentation head, and its geometry (channels and shape of
each decoder block's output).

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

from typing import Sequence

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
