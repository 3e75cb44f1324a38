"""Figures of the global strategies' contrastive masks: positive/negative heatmaps of a batch side by side, and
PCL's masks at a threshold next to G^D's, with a threshold slider (ipywidgets).

Figures are :class:`matplotlib.figure.Figure` objects (no pyplot state), like :mod:`glcl_core.viz.volumes`.
"""
from __future__ import annotations

from typing import Mapping

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from glcl_core.analysis.batch_masks import batch_table, mask_summary
from glcl_core.contrastive.global_masks import global_masks

# mask cell states: 0 ignored (neither), 1 negative (denominator only), 2 positive, 3 the anchor itself
MASK_COLOURS = ListedColormap(["#ffffff", "#b9cfe4", "#d62728", "#222222"])
MASK_LABELS = ("ignored (neither)", "negative (denominator)", "positive", "anchor itself")
FALSE_NEGATIVE = "#ff9f1c"


# ---------------------------------------------------------------------------------------------------- masks
def _states(positives, negatives) -> np.ndarray:
    pos = np.asarray(torch.as_tensor(positives).cpu(), dtype=bool)
    neg = np.asarray(torch.as_tensor(negatives).cpu(), dtype=bool)
    state = np.where(pos, 2, np.where(neg, 1, 0))
    np.fill_diagonal(state, 3)
    return state


def mask_order(meta: pd.DataFrame, sort_by: str = "partition") -> np.ndarray:
    """Row order for a mask plot: by partition, volume, slice and view (``"partition"``), by position
    (``"position"``) or as drawn (``"batch"``)."""
    if sort_by == "batch":
        return np.arange(len(meta))
    keys = {"partition": ["partition", "volume", "image", "view"], "position": ["position", "volume", "image", "view"]}
    if sort_by not in keys:
        raise ValueError(f"sort_by must be 'partition', 'position' or 'batch', got {sort_by!r}")
    return meta.sort_values(keys[sort_by], kind="stable").index.to_numpy()


def _tick_labels(meta: pd.DataFrame, label_by: str) -> list[str]:
    if label_by == "partition":
        return [f"v{v} P{s} {'ab'[w % 2]}" for v, s, w in zip(meta["volume"], meta["partition"], meta["view"])]
    return [f"v{v} {p:.2f} {'ab'[w % 2]}" for v, p, w in zip(meta["volume"], meta["position"], meta["view"])]


def _draw_mask(ax, state: np.ndarray, meta: pd.DataFrame, label_by: str, show_ticks: bool, boundaries: bool,
               extra: np.ndarray | None = None) -> None:
    ax.imshow(state, cmap=MASK_COLOURS, vmin=-0.5, vmax=3.5, interpolation="nearest")
    if extra is not None and extra.any():  # highlighted cells (e.g. PCL positives that G^D calls negatives)
        ys, xs = np.nonzero(extra)
        ax.scatter(xs, ys, marker="s", s=max(2.0, 900.0 / len(state)), facecolors="none",
                   edgecolors=FALSE_NEGATIVE, linewidths=1.2)
    n = len(state)
    if boundaries and label_by == "partition":
        part = meta["partition"].to_numpy()
        for edge in np.flatnonzero(np.diff(part)) + 0.5:
            ax.axhline(edge, color="black", lw=0.8)
            ax.axvline(edge, color="black", lw=0.8)
    if show_ticks and n <= 64:
        labels = _tick_labels(meta, label_by)
        ax.set_yticks(range(n), labels, fontsize=max(4.5, min(7.0, 170.0 / n)))
        ax.set_xticks(range(n), labels, fontsize=max(4.5, min(7.0, 170.0 / n)), rotation=90)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.tick_params(length=0)


def plot_masks(masks: Mapping[str, tuple], metadata, sort_by: str = "partition", label_by: str | None = None,
               title: str | None = None, fig: Figure | None = None) -> Figure:
    """Heatmaps of the positive/negative masks of several strategies over one batch, side by side.

    Args:
        masks: ``name -> (positives, negatives)``, ``(N, N)`` bool (from
            :func:`~glcl_core.contrastive.global_masks.global_masks`), all over the same batch.
        metadata: the batch (:class:`~glcl_core.batch.Batch`) or its
            :func:`~glcl_core.analysis.batch_masks.batch_table`.
        sort_by: row/column order: ``"partition"`` (partition, volume, view: G^D's positive blocks are squares on
            the diagonal), ``"position"`` (PCL's positives form a band) or ``"batch"``.
        label_by: tick labels ``"partition"`` (``v1 P2 a`` = volume 1, partition 2, view a) or ``"position"``
            (``v1 0.43 b``); default follows ``sort_by``.
        title: figure title.

    Cells: red = positive pair, light blue = negative (in the denominator only), white = ignored, black = the
    anchor itself. Row ``i`` is anchor ``i``.
    """
    meta = metadata if isinstance(metadata, pd.DataFrame) else batch_table(metadata)
    if not masks:
        raise ValueError("no masks to plot")
    order = mask_order(meta, sort_by)
    label_by = label_by or ("position" if sort_by == "position" else "partition")
    sorted_meta = meta.iloc[order].reset_index(drop=True)
    n_panels = len(masks)
    side = 3.3 if len(meta) <= 32 else 3.8
    if fig is None:
        fig = Figure(figsize=(side * n_panels + 0.8, side + 1.1), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    for j, (ax, (name, (pos, neg))) in enumerate(zip(axes, masks.items())):
        state = _states(pos, neg)[np.ix_(order, order)]
        _draw_mask(ax, state, sorted_meta, label_by, show_ticks=True, boundaries=True)
        if j:
            ax.set_yticklabels([])
        counts = np.bincount(state.ravel(), minlength=4)
        ax.set_title(f"{name}: {counts[2] / len(state):.1f} pos, {counts[1] / len(state):.1f} neg per anchor",
                     fontsize=9)
    handles = [Patch(facecolor=MASK_COLOURS(k), edgecolor="0.5", label=MASK_LABELS[k]) for k in range(4)]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------ PCL vs G^D widget
def plot_threshold_masks(metadata, threshold: float, fig: Figure | None = None) -> Figure:
    """PCL's masks at ``threshold`` next to G^D's masks on the same batch (sorted by position).

    Orange squares mark pairs of **different volumes** that PCL makes positives (``|dp| < threshold``) while G^D
    treats them as negatives because a partition boundary lies between them (G^D's false negatives).
    """
    meta = metadata if isinstance(metadata, pd.DataFrame) else batch_table(metadata)
    t = {k: torch.as_tensor(meta[k].to_numpy().copy()) for k in ("image", "volume", "partition", "position")}
    pcl = global_masks("PCL", t["image"], t["volume"], t["partition"], t["position"], threshold=float(threshold))
    gd = global_masks("GD", t["image"], t["volume"], t["partition"], t["position"])
    order = mask_order(meta, "position")
    sorted_meta = meta.iloc[order].reset_index(drop=True)
    vol = meta["volume"].to_numpy()
    conflict = (pcl[0].numpy() & gd[1].numpy() & (vol[:, None] != vol[None, :]))[np.ix_(order, order)]
    summary = mask_summary({"PCL": pcl, "GD": gd})
    if fig is None:
        fig = Figure(figsize=(9.0, 5.9), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(1, 2)
    for ax, (name, masks), extra in ((axes[0], ("PCL", pcl), None), (axes[1], ("GD", gd), conflict)):
        _draw_mask(ax, _states(*masks)[np.ix_(order, order)], sorted_meta, "position", show_ticks=True,
                   boundaries=False, extra=extra)
        row = summary.loc[name]
        label = (f"PCL, threshold {threshold:.2f}" if name == "PCL"
                 else "GD on the same batch")
        ax.set_title(f"{label}\n{row['positives']:.1f} positives, {row['negatives']:.1f} negatives per anchor",
                     fontsize=9)
    axes[1].set_yticklabels([])
    handles = [Patch(facecolor=MASK_COLOURS(k), edgecolor="0.5", label=MASK_LABELS[k]) for k in range(4)]
    handles.append(Patch(facecolor="none", edgecolor=FALSE_NEGATIVE, lw=1.5,
                         label=f"GD negative, PCL positive ({int(conflict.sum())} pairs)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def threshold_explorer(metadata, threshold: float = 0.1, max_threshold: float = 0.5) -> widgets.VBox:
    """A threshold slider redrawing :func:`plot_threshold_masks`. Returns ``VBox([slider, Output])`` with the first
    frame already drawn (the rendered book shows it)."""
    from glcl_core.viz.browse import show_in

    meta = metadata if isinstance(metadata, pd.DataFrame) else batch_table(metadata)
    slider = widgets.FloatSlider(value=float(threshold), min=0.01, max=float(max_threshold), step=0.01,
                                 description="threshold", readout_format=".2f", continuous_update=False,
                                 layout=widgets.Layout(width="420px"))
    output = widgets.Output()

    def render(*_) -> None:
        show_in(output, plot_threshold_masks(meta, slider.value))

    slider.observe(render, names="value")
    render()
    return widgets.VBox([slider, output])
