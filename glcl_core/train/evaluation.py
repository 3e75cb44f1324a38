"""Evaluation of a segmentation network: slice-by-slice prediction of a volume, mapped back to its native grid,
and 3D Dice per class and volume (native or resampled resolution).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from glcl_core.data.preprocess import scores_to_native
from glcl_core.data.volume import Volume
from glcl_core.models import UNet
from glcl_core.train.stages import _autocast


# ---------------------------------------------------------------------------------------------------- evaluation
def dice_per_class(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """3D Dice per class. pred, target: (Z, H, W) int. Returns (n_classes,) float; NaN where a class is absent
    from both prediction and reference (undefined, not perfect)."""
    scores = np.full(n_classes, np.nan)
    for k in range(n_classes):
        p, t = pred == k, target == k
        total = p.sum() + t.sum()
        if total > 0:
            scores[k] = 2.0 * np.logical_and(p, t).sum() / total
    return scores


@torch.no_grad()
def _predict_logits(model: UNet, volume: Volume, device: torch.device | str | None = None,
                    batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Logits ``(b, K, H, W)`` on the device for consecutive chunks of ``batch_size`` slices of ``volume``, in eval
    mode (the model's mode is restored afterwards)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    slices = torch.from_numpy(volume.image).unsqueeze(1)  # (Z, 1, H, W)
    try:
        for start in range(0, slices.shape[0], batch_size):
            x = slices[start:start + batch_size].to(device)
            with _autocast(device):
                logits = model(x)
            yield logits
    finally:
        model.train(was_training)


def predict_volume(model: UNet, volume: Volume, device: torch.device | str | None = None,
                   batch_size: int = 32) -> np.ndarray:
    """Label map (Z, H, W) int64 on the preprocessed grid, predicted slice by slice."""
    out = [logits.argmax(dim=1).cpu() for logits in _predict_logits(model, volume, device, batch_size)]
    return torch.cat(out).numpy().astype(np.int64)


def native_prediction(model: UNet, volume: Volume, device: torch.device | str | None = None,
                      batch_size: int = 32, interpolation: str = "linear") -> np.ndarray:
    """Label map ``(Z, H0, W0)`` int64 on the volume's native grid (``volume.meta["native_grid"]``, recorded by the
    NIfTI loader): the softmax probabilities ``(b, K, H, W)`` predicted on the preprocessed grid are mapped back
    through the centre crop/pad and the in-plane resampling, bilinearly by default, then argmax
    (:func:`glcl_core.data.preprocess.scores_to_native`). Interpolating probabilities rather than the predicted
    labels gives smooth boundaries on a finer native grid (nearest-neighbour label upsampling gives staircase
    boundaries of preprocessed-pixel steps). Native pixels cropped away by preprocessing are background.
    ``interpolation="nearest"`` is nearest-neighbour resampling of the predicted labels.
    """
    grid = (volume.meta or {}).get("native_grid")
    if grid is None:
        raise ValueError(f"{volume.source or volume.name}: no meta['native_grid'] (volume not made by the loader)")
    out = []
    for logits in _predict_logits(model, volume, device, batch_size):
        probs = logits.float().softmax(dim=1).cpu().numpy()
        out.append(scores_to_native(probs, grid, interpolation))
    return np.concatenate(out)


EVAL_RESOLUTIONS = ("native", "resampled")


def evaluate(model: UNet, volumes: list[Volume], device: torch.device | str | None = None,
             n_classes: int | None = None, class_names: list[str] | None = None, resolution: str = "native",
             interpolation: str = "linear"):
    """Foreground 3D Dice per class and test volume, as a tidy table (volume, class, dice, resolution).

    Args:
        resolution: ``"native"`` (default): Dice on each volume's own grid, the prediction mapped back
            (:func:`native_prediction`) and compared with the label at its stored resolution (canonical orientation,
            not resampled); needs ``meta["native_grid"]`` and a native label
            (:func:`glcl_core.data.cases.native_label`), which volumes from :func:`glcl_core.data.load_volumes` (NIfTI
            folders and the embedded data set) carry. Other volumes (e.g. built by hand) fall back to the preprocessed
            grid. ``"resampled"``: Dice on the preprocessed grid for every volume (faster; voxels cropped away by
            preprocessing are not counted and the label has been resampled with nearest neighbour).
        interpolation: how native predictions are mapped back, ``"linear"`` (probabilities) or ``"nearest"``.
    Returns:
        pandas.DataFrame with one row per volume and foreground class; ``resolution`` says which grid each row's
        Dice was computed on (``"native"`` or ``"resampled"``), and ``table.attrs["resolution"]`` is that value
        for the whole table (``"mixed"`` when volumes differ). Dice is NaN for a class absent from both prediction
        and reference of one volume; a class absent from every volume's reference and prediction (e.g. declared
        but not in this data set) has no rows at all.
    """
    import pandas as pd

    from glcl_core.data.cases import native_label

    if resolution not in EVAL_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {EVAL_RESOLUTIONS}, got {resolution!r}")
    n_classes = n_classes or model.n_classes
    rows = []
    for v in volumes:
        if v.label is None:
            raise ValueError(f"{v.source or v.name}: evaluation needs labels")
        grid = (v.meta or {}).get("native_grid")
        target = native_label(v) if resolution == "native" and grid is not None else None
        if target is not None:
            if target.shape != (v.n_slices, *grid.shape):
                raise ValueError(f"{v.source or v.name}: native label shape {target.shape} does not match "
                                 f"({v.n_slices}, {grid.shape[0]}, {grid.shape[1]})")
            used = "native"
            pred = native_prediction(model, v, device, interpolation=interpolation)
        else:
            used, pred, target = "resampled", predict_volume(model, v, device), v.label
        scores = dice_per_class(pred, target, n_classes)
        for k in range(1, n_classes):
            name = class_names[k] if class_names else str(k)
            rows.append({"volume": v.name, "class": name, "dice": float(scores[k]), "resolution": used})
    table = pd.DataFrame(rows, columns=["volume", "class", "dice", "resolution"])
    seen = table.groupby("class", sort=False)["dice"].transform("count") > 0  # classes with any defined Dice
    table = table[seen].reset_index(drop=True)
    used_all = set(table["resolution"])
    table.attrs["resolution"] = used_all.pop() if len(used_all) == 1 else ("mixed" if used_all else resolution)
    return table
