"""The public augmentation calls: paired views for contrastive pre-training (global: spatial + intensity; local:
intensity only) and warped image/label pairs for fine-tuning, on tensors or on a :class:`~glcl_core.batch.Batch`.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from glcl_core.augment.params import GlobalAug, LocalAug, SegAug
from glcl_core.augment.transforms import _check_images, _intensity, _sampling_grid, _warp
from glcl_core.batch import Batch


# ------------------------------------------------------------------------------ public API
def spatial_intensity(images: torch.Tensor, generator: torch.Generator | None, params: GlobalAug) -> torch.Tensor:
    """One augmented view. ``images: (B, C, H, W)`` float -> ``(B, C, H, W)``."""
    _check_images(images)
    b, _, h, w = images.shape
    grid = _sampling_grid(b, h, w, params, generator, images.device, images.dtype)
    return _intensity(_warp(images, grid, "bilinear", params.padding_mode), params, generator)


def global_views(
    images: torch.Tensor, generator: torch.Generator | None, params: GlobalAug = GlobalAug()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent spatial + intensity views. ``images: (B, 1, H, W)`` -> two ``(B, 1, H, W)``."""
    return spatial_intensity(images, generator, params), spatial_intensity(images, generator, params)


def local_views(
    images: torch.Tensor, generator: torch.Generator | None, params: LocalAug = LocalAug()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent intensity-only views (pixel-aligned). ``images: (B, 1, H, W)`` -> two ``(B, 1, H, W)``."""
    _check_images(images)
    return _intensity(images, params, generator), _intensity(images, params, generator)


def augment_pair(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator | None,
    params: SegAug = SegAug(),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fine-tuning augmentation: one spatial warp for image and label, intensity on the image only.

    ``images: (B, 1, H, W)`` float, ``labels: (B, H, W)`` int64 (or None) -> same shapes and dtypes. Labels are
    resampled with nearest interpolation, so they keep valid class values (outside the image: 0).
    """
    _check_images(images)
    b, _, h, w = images.shape
    if labels is not None and tuple(labels.shape) != (b, h, w):
        raise ValueError(f"labels must be (B, H, W) = {(b, h, w)}, got {tuple(labels.shape)}")
    grid = _sampling_grid(b, h, w, params, generator, images.device, images.dtype)
    warped = _intensity(_warp(images, grid, "bilinear", params.padding_mode), params, generator)
    if labels is None:
        return warped, None
    # Nearest sampling of the float class map returns exact class values; zeros padding -> background.
    lab = _warp(labels[:, None].to(images.dtype), grid, "nearest", params.padding_mode)
    return warped, lab[:, 0].round().to(labels.dtype)


def augment_batch(batch: Batch, generator: torch.Generator | None, params: SegAug = SegAug()) -> Batch:
    """:func:`augment_pair` on a :class:`Batch` (metadata unchanged)."""
    images, labels = augment_pair(batch.images, batch.labels, generator, params)
    return replace(batch, images=images, labels=labels)


def make_views(
    batch: Batch,
    generator: torch.Generator | None,
    stage: str = "global",
    params: GlobalAug | LocalAug | None = None,
) -> Batch:
    """A batch of ``2B`` views: all first views, then all second views, metadata repeated.

    ``stage="global"``: :func:`global_views` (labels dropped: they no longer match the warped pixels).
    ``stage="local"``: :func:`local_views` (labels kept: the views are pixel-aligned).
    """
    if stage == "global":
        v1, v2 = global_views(batch.images, generator, params if params is not None else GlobalAug())
        first, second = replace(batch, images=v1, labels=None), replace(batch, images=v2, labels=None)
    elif stage == "local":
        v1, v2 = local_views(batch.images, generator, params if params is not None else LocalAug())
        first, second = batch.with_images(v1), batch.with_images(v2)
    else:
        raise ValueError(f"stage must be 'global' or 'local', got {stage!r}")
    return Batch.cat([first, second])
