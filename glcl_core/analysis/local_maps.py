"""Looking inside the local stage: decoder feature maps, pixel similarity maps and the landmarks they are read at.
Also re-exports the mask counts and the small ablation of :mod:`glcl_core.analysis.ablation` (one ``la`` for all).

The local contrastive loss (Chaitanya et al. 2020) trains the first ``l`` decoder blocks and the 1x1-conv head g2
on top of a frozen, globally pre-trained encoder. This module does not train anything itself: it reuses the
stages of :mod:`glcl_core.train` and only extracts, compares and tabulates.

* :func:`feature_maps`: g2 (or plain decoder) maps of a stack of slices, in evaluation mode.
* :func:`similarity_map`: cosine similarity of every pixel's feature vector with one chosen pixel.
* :func:`random_local_model`: the starting point of the local stage (pre-trained encoder, fresh decoder and g2).
* :func:`landmarks`: one interior pixel per tissue class of a labelled slice (for similarity widgets).
* :func:`similarity_summary`: minimum and per-region medians of similarity maps (the numbers behind a figure).

Defined in :mod:`glcl_core.analysis.ablation` and importable from here too:

* :func:`mask_counts`: positives and negatives per anchor region of a local strategy on a batch's metadata.
* :func:`chance_loss`: the local loss of features that carry no information, ``log(1 + negatives)``.
* :func:`local_ablation`: for each setting and seed, local pre-training from one shared global encoder, a short
  fine-tune with a labelled volume, and Dice on the validation volumes -> one table (means and sd over seeds).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from glcl_core.analysis.ablation import (
    LOCAL_FIELDS, Ablation, chance_loss, local_ablation, mask_counts, negatives_per_anchor, setting_name,
)
from glcl_core.data.volume import Volume
from glcl_core.models import LocalHead, UNet, load_pretrained
from glcl_core.train.config import RunConfig
from glcl_core.train.pretrain import build_local_head
from glcl_core.train.stages import StageResult, build_model

__all__ = [
    "feature_maps",
    "similarity_map",
    "random_local_model",
    "calibrated",
    "landmarks",
    "similarity_summary",
    "mask_counts",
    "negatives_per_anchor",
    "chance_loss",
    "middle_slices",
    "setting_name",
    "Ablation",
    "local_ablation",
]


# ----------------------------------------------------------------------------------------------- features
def _as_image_batch(images: Any) -> torch.Tensor:
    """``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` array/tensor -> ``(N, 1, H, W)`` float32 tensor."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.to(torch.float32)
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"images must be (H, W), (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    return x


@torch.no_grad()
def feature_maps(
    model: UNet,
    head: torch.nn.Module | None,
    images: Any,
    n_blocks: int,
    device: torch.device | str | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Feature maps after decoder block ``n_blocks`` and the local head g2 (if ``head`` is given).

    Args:
        model: a U-Net (its encoder and first ``n_blocks`` decoder blocks are used).
        head: g2 (:class:`~glcl_core.models.LocalHead`), or ``None`` for the decoder output itself.
        images: ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` slices (numpy or torch).
        n_blocks: decoder block ``l`` (1-based; 0 = bottleneck).
        device: where to compute (default: where the model is).

    Returns:
        ``(N, C, h, w)`` float32 on the CPU. Modules run in evaluation mode and are put back as they were.
    """
    x = _as_image_batch(images)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    modules = [m for m in (model, head) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.to(device).eval()
    try:
        out = []
        for start in range(0, x.shape[0], batch_size):
            f = model.decode(model.encode(x[start:start + batch_size].to(device)), n_blocks=n_blocks)
            if head is not None:
                f = head(f)
            out.append(f.float().cpu())
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return torch.cat(out)


def similarity_map(maps: Any, y: int, x: int, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Cosine similarity of every pixel's feature vector with the feature vector at pixel ``(y, x)``.

    Args:
        maps: one feature map ``(C, h, w)`` (or ``(1, C, h, w)``), numpy or torch.
        y, x: the chosen pixel, in the coordinates of the output (image pixels when ``size`` is given).
        size: ``(H, W)`` (or ``H`` for square) to upsample the map to first (bilinear), e.g. the image size when
            the map comes from a coarser decoder block; ``None`` keeps the map's own grid.

    Returns:
        ``(H, W)`` float32 array in ``[-1, 1]``; the chosen pixel itself is 1 (unless its feature is all zero).
    """
    f = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps).detach().float().cpu()
    if f.dim() == 4 and f.shape[0] == 1:
        f = f[0]
    if f.dim() != 3:
        raise ValueError(f"maps must be (C, h, w) or (1, C, h, w), got {tuple(f.shape)}")
    if size is not None:
        hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        if tuple(f.shape[-2:]) != hw:
            f = F.interpolate(f[None], size=hw, mode="bilinear", align_corners=False)[0]
    h, w = f.shape[-2:]
    if not (0 <= int(y) < h and 0 <= int(x) < w):
        raise ValueError(f"pixel ({y}, {x}) is outside the {h}x{w} map")
    unit = F.normalize(f, dim=0)  # per-pixel L2 normalisation over channels
    return torch.einsum("chw,c->hw", unit, unit[:, int(y), int(x)]).numpy().astype(np.float32)


def random_local_model(
    cfg: RunConfig, init: StageResult | dict | None = None, n_blocks: int | None = None, seed: int = 0
) -> tuple[UNet, LocalHead]:
    """The local stage's starting point: encoder from ``init`` (a global stage or a state dict; ``None`` keeps it
    random too), decoder blocks and g2 freshly initialised from ``seed``. Nothing is trained.

    The decoder's batch-norm running statistics are still the initial 0 and 1; see :func:`calibrated`."""
    n_blocks = cfg.local.decoder_blocks if n_blocks is None else int(n_blocks)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build_model(cfg)
        head = build_local_head(cfg, model, n_blocks)  # g2 (and region projection) as cfg.local builds them
    finally:
        torch.random.set_rng_state(state)  # leave the caller's random stream as it was
    if init is not None:
        weights = init.weights() if isinstance(init, StageResult) else init
        load_pretrained(model, weights, parts=("encoder",))
    model.eval()
    head.eval()
    return model, head


@torch.no_grad()
def calibrated(model: UNet, images: Any, n_blocks: int, batch_size: int = 32) -> UNet:
    """A copy of ``model`` whose first ``n_blocks`` decoder blocks have their batch-norm running statistics
    re-estimated on ``images`` (a plain average over the slices, as in training mode); all weights unchanged.

    In evaluation mode batch norm uses running statistics. A random decoder still has the initial ones (mean 0,
    variance 1), and a short local stage has moved them only part of the way. Re-estimating them on the same
    slices for every model compares the features themselves, as the loss sees them in training.
    """
    import copy

    x = _as_image_batch(images)
    device = next(model.parameters()).device
    clone = copy.deepcopy(model).eval()
    norms = [m for m in clone.decoder[:n_blocks].modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
        m.train()
    for start in range(0, x.shape[0], batch_size):
        clone.decode(clone.encode(x[start:start + batch_size].to(device)), n_blocks=n_blocks)
    for m in norms:
        m.momentum = 0.1
        m.eval()
    return clone


def landmarks(label: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
    """One pixel deep inside each class present in a 2D label map: the pixel farthest from any other class.

    Returns ``{name: (y, x)}`` in class order (names from ``class_names``, else ``"class k"``).
    """
    from scipy.ndimage import distance_transform_edt

    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be a 2D slice, got shape {label.shape}")
    points: dict[str, tuple[int, int]] = {}
    for k in np.unique(label):
        inside = label == k
        depth = distance_transform_edt(inside)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        name = class_names[int(k)] if class_names is not None and int(k) < len(class_names) else f"class {int(k)}"
        points[str(name)] = (int(y), int(x))
    return points


def similarity_summary(maps: Mapping[str, Any], y: int, x: int, label: Any,
                       class_names: Sequence[str] | None = None, border: int = 4, short_names: bool = True):
    """Numbers behind a similarity figure: the minimum of each map and its median over regions of the slice.

    Args:
        maps: ``{name: (C, h, w)}`` feature maps of one slice (upsampled to the label's size, as in
            :func:`~glcl_core.viz.local.plot_similarity`).
        y, x: the chosen pixel (image coordinates).
        label: the label slice ``(H, W)``; class 0 is the background.
        class_names: names of the classes (default ``"class k"``).
        border: width in pixels of the image border, reported as a region of its own.
        short_names: name each column by the first word of its map's name (``"(a) random ..."`` -> ``"(a)"``)
            when these are distinct.

    Returns:
        pandas.DataFrame, one column per map; rows ``minimum``, ``median, whole slice``, ``median, image border
        (N px)``, ``median, <background> inside the border``, then ``median, <class>`` for each foreground class
        present (these include pixels in the border).
    """
    import pandas as pd

    lab = np.asarray(label)
    if lab.ndim != 2:
        raise ValueError(f"label must be a 2D slice, got shape {lab.shape}")
    names = [str(class_names[k]) if class_names is not None and k < len(class_names) else f"class {k}"
             for k in range(int(lab.max()) + 1)]
    frame = np.zeros(lab.shape, bool)
    if border > 0:
        frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = True, True, True, True
    regions = {"whole slice": np.ones(lab.shape, bool), f"image border ({border} px)": frame,
               f"{names[0]} inside the border": (lab == 0) & ~frame,
               **{names[k]: lab == k for k in range(1, len(names)) if (lab == k).any()}}
    keys = list(maps)
    if short_names and len({k.split()[0] if k.split() else k for k in keys}) == len(keys):
        columns = [k.split()[0] if k.split() else k for k in keys]
    else:
        columns = keys
    out = {}
    for column, key in zip(columns, keys):
        sim = similarity_map(maps[key], y, x, size=lab.shape)
        out[column] = {"minimum": float(sim.min()),
                       **{f"median, {r}": float(np.median(sim[m])) if m.any() else float("nan")
                          for r, m in regions.items()}}
    return pd.DataFrame(out)


def middle_slices(volumes: Sequence[Volume], partitions: Sequence[int], n_partitions: int = 4):
    """The middle slice of each chosen partition of each volume, as a :class:`~glcl_core.batch.Batch` ordered
    volume-major like the partition sampler's (``volume`` = index in ``volumes``, ``image`` = row number)."""
    from glcl_core.batch import Batch

    images, labels, volume, partition, position = [], [], [], [], []
    for i, v in enumerate(volumes):
        parts = v.partitions(n_partitions)
        for s in partitions:
            members = np.flatnonzero(parts == int(s))
            if members.size == 0:
                raise ValueError(f"{v.name} has no slice in partition {s} of {n_partitions}")
            k = int(members[members.size // 2])
            images.append(v.image[k])
            labels.append(v.label[k] if v.label is not None else None)
            volume.append(i)
            partition.append(int(s))
            position.append(float(v.positions[k]))
    has_labels = all(lab is not None for lab in labels)
    return Batch(
        images=torch.from_numpy(np.stack(images)).float()[:, None],
        labels=torch.from_numpy(np.stack(labels)).long() if has_labels else None,
        image=torch.arange(len(images)),
        volume=torch.tensor(volume),
        partition=torch.tensor(partition),
        position=torch.tensor(position, dtype=torch.float64),
    )
