"""Segmentation overlays: the same test slices segmented by several initialisations next to the reference, with
each slice's 2D and each volume's 3D Dice; the predictions of a grid's fine-tuned models, and a browser widget.

Figures are :class:`matplotlib.figure.Figure` objects (no pyplot state), like :mod:`glcl_core.viz.volumes`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from glcl_core.data.volume import Volume
from glcl_core.viz.volumes import label_colormap

ERROR_COLOUR = (0.95, 0.05, 0.35, 1.0)  # wrong pixels (not a tab10 class colour for up to 8 classes)


# ---------------------------------------------------------------------------------------------------- overlays
def slice_dice(pred: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Mean 2D Dice over the foreground classes present in the prediction or the reference of one slice
    (NaN when the slice has no foreground in either)."""
    scores = []
    for k in range(1, n_classes):
        p, t = pred == k, target == k
        total = p.sum() + t.sum()
        if total:
            scores.append(2.0 * np.logical_and(p, t).sum() / total)
    return float(np.mean(scores)) if scores else float("nan")


def volume_dice(pred: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Mean 3D foreground Dice of one volume (the number the results table averages)."""
    scores = []
    for k in range(1, n_classes):
        p, t = pred == k, target == k
        total = p.sum() + t.sum()
        if total:
            scores.append(2.0 * np.logical_and(p, t).sum() / total)
    return float(np.mean(scores)) if scores else float("nan")


def plot_overlays(volume: Volume, predictions: Mapping[str, np.ndarray], slices: Sequence[int],
                  n_classes: int | None = None, show_errors: bool = False, class_names: Sequence[str] | None = None,
                  alpha: float = 0.5, fig: Figure | None = None) -> Figure:
    """The same test slices segmented by several initialisations, next to the reference.

    Rows: the slices. Columns: the reference labels, then one column per prediction (titled with the volume's 3D
    Dice), each panel with its slice's 2D Dice. ``show_errors`` paints every wrong pixel (prediction != reference)
    in a single error colour instead of the predicted class.

    Args:
        volume: a labelled volume (``image`` and ``label`` of shape (Z, H, W)).
        predictions: name -> predicted label map (Z, H, W), e.g. from :func:`load_predictions`.
        slices: slice indices to show.
    """
    if volume.label is None:
        raise ValueError(f"{volume.name}: overlays need the reference labels")
    for name, pred in predictions.items():
        if pred.shape != volume.image.shape:
            raise ValueError(f"prediction {name!r} has shape {pred.shape}, volume {volume.name} {volume.image.shape}")
    slices = [int(np.clip(z, 0, volume.n_slices - 1)) for z in slices]
    if not slices:
        raise ValueError("no slices to show")
    n_classes = n_classes or int(max([volume.label.max()] + [p.max() for p in predictions.values()])) + 1
    cmap = label_colormap(n_classes)
    columns = 1 + len(predictions)
    if fig is None:
        fig = Figure(figsize=(1.95 * columns + 0.4, 2.0 * len(slices) + 0.9), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(len(slices), columns, squeeze=False)
    panels = [("reference", volume.label)] + list(predictions.items())
    for row, z in enumerate(slices):
        for col, (name, labels) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(volume.image[z], cmap="gray", vmin=0.0, vmax=1.0)
            if col > 0 and show_errors:
                wrong = labels[z] != volume.label[z]
                rgba = np.zeros(wrong.shape + (4,))
                rgba[wrong] = ERROR_COLOUR
                ax.imshow(rgba, alpha=0.85)
            else:
                ax.imshow(np.ma.masked_equal(labels[z], 0), cmap=cmap, vmin=0, vmax=max(1, n_classes - 1),
                          alpha=alpha)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"z={z} (pos {volume.positions[z]:.2f})", fontsize=8)
            else:
                d = slice_dice(labels[z], volume.label[z], n_classes)
                ax.text(0.02, 0.02, "no fg" if np.isnan(d) else f"{d:.2f}", transform=ax.transAxes, fontsize=8,
                        color="white", va="bottom", bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "lw": 0})
            if row == 0:
                title = name if col == 0 else f"{name}\n3D Dice {volume_dice(labels, volume.label, n_classes):.3f}"
                ax.set_title(title, fontsize=9)
    names = class_names or [f"class {k}" for k in range(n_classes)]
    handles = [Patch(color=cmap(k), alpha=min(1.0, alpha + 0.2), label=str(names[k])) for k in range(1, n_classes)]
    if show_errors:
        handles.append(Patch(color=ERROR_COLOUR, label="wrong pixel"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{volume.name}: reference and predictions (number in a panel: that slice's 2D Dice)", fontsize=10)
    return fig


def load_predictions(cfg, run_dir: str | Path, volumes: Sequence[Volume], inits: Sequence[str], n_labelled: int,
                     seed: int, device=None) -> dict[str, dict[str, np.ndarray]]:
    """Predictions of fine-tuned models kept in a grid's run folder (``run_experiment``'s layout).

    Loads ``run_dir/finetune/<init>/n<n_labelled>_s<seed>/final.pt`` for each init (the validation-selected
    weights) and predicts every volume. Returns ``{volume name: {init: (Z, H, W) label map}}``.
    Raises FileNotFoundError for a cell that has not been run.
    """
    from glcl_core.train.checkpoint import load_checkpoint
    from glcl_core.train.evaluation import predict_volume
    from glcl_core.train.stages import build_model

    out: dict[str, dict[str, np.ndarray]] = {v.name: {} for v in volumes}
    for init in inits:
        path = Path(run_dir) / "finetune" / init / f"n{n_labelled}_s{seed}" / "final.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no fine-tuned model for {init}, n={n_labelled}, seed={seed}")
        model = build_model(cfg)
        model.load_state_dict(load_checkpoint(path)["model"])
        model.eval()
        if device is not None:
            model.to(device)
        for v in volumes:
            out[v.name][init] = predict_volume(model, v, device)
    return out


def overlay_browser(volumes: Sequence[Volume], predictions: Mapping[str, Mapping[str, np.ndarray]],
                    n_rows: int = 1, volume: int = 0, z: int | None = None, n_classes: int | None = None,
                    class_names: Sequence[str] | None = None):
    """Widget: a test-volume dropdown, a slice slider and an "errors" toggle over :func:`plot_overlays`.

    ``predictions`` is ``{volume name: {init: label map}}`` (:func:`load_predictions`). ``n_rows`` consecutive
    views are shown: the chosen slice and ``n_rows - 1`` slices spread above it. The first frame is drawn at once
    (and stays visible in the rendered book).
    """
    import ipywidgets as widgets

    from glcl_core.viz.browse import volume_browser

    def frame(v: Volume, z: int, show_errors: bool) -> Figure:
        step = max(1, v.n_slices // 6)
        shown = [min(v.n_slices - 1, z + i * step) for i in range(n_rows)]
        return plot_overlays(v, predictions[v.name], list(dict.fromkeys(shown)), n_classes=n_classes,
                             show_errors=show_errors, class_names=class_names)

    errors = widgets.Checkbox(value=False, description="show wrong pixels", indent=False)
    return volume_browser(volumes, frame, errors, volume, z)
