"""Figures and a widget for the local contrastive loss (Chapter 4): paired views, region layouts, L^R / L^D masks
and pixel similarity maps.

The ablation figures (:mod:`glcl_core.viz.ablation`: :func:`plot_ablation`, :func:`plot_local_curves`) are
re-exported here, so ``from glcl_core.viz import local as viz; viz.plot_ablation(...)`` keeps working.

Region drawings work in *feature-map* coordinates: the slice is drawn with an ``extent`` that maps it onto the
``h x w`` grid of the decoder block, so a region with top-left corner ``(row, col)`` is the square
``[col - 0.5, col + K - 0.5] x [row - 0.5, row + K - 0.5]`` whatever the block's resolution.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from glcl_core.analysis.local_maps import landmarks, similarity_map
from glcl_core.contrastive.local_masks import local_masks
from glcl_core.contrastive.regions import local_region_corners
from glcl_core.viz.ablation import plot_ablation, plot_local_curves  # noqa: F401  re-exported
from glcl_core.viz.browse import show_in
from glcl_core.viz.volumes import label_colormap

ANCHOR, POSITIVE, NEGATIVE, OTHER = "#ffd400", "#2ca02c", "#d62728", "#9ecae1"

__all__ = [
    "plot_view_pairs",
    "draw_regions",
    "plot_region_layouts",
    "plot_local_masks",
    "plot_similarity",
    "similarity_explorer",
    "plot_ablation",
    "plot_local_curves",
]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _slice2d(x: Any) -> np.ndarray:
    a = _np(x)
    a = a.reshape(a.shape[-2:]) if a.ndim > 2 and int(np.prod(a.shape[:-2])) == 1 else a
    if a.ndim != 2:
        raise ValueError(f"expected one 2D slice, got shape {a.shape}")
    return a


def _mark(ax, y: float, x: float, size: float = 9) -> None:
    ax.plot([x], [y], marker="+", color="#00e5ff", markersize=size, markeredgewidth=2)
    ax.plot([x], [y], marker="o", color="#00e5ff", markersize=size * 0.9, fillstyle="none", markeredgewidth=1)


# ---------------------------------------------------------------------------------------------------- views
def plot_view_pairs(image: Any, global_pair: Sequence[Any], local_pair: Sequence[Any],
                    point: tuple[int, int] | None = None, fig: Figure | None = None) -> Figure:
    """Global (spatial + intensity) views next to local (intensity-only) views of one slice.

    Rows: global views, local views. Columns: the slice, view 1, view 2 (the same pixel ``point`` marked in each),
    and a scatter of view-1 against view-2 intensities pixel by pixel: a thin curve means the views are
    pixel-aligned (only the intensities changed), a cloud means pixel ``(y, x)`` shows different anatomy.
    """
    img = _slice2d(image)
    h, w = img.shape
    y, x = point if point is not None else (h // 2, w // 2)
    fig = fig or plt.figure(figsize=(11, 5.6))
    axes = fig.subplots(2, 4, gridspec_kw={"width_ratios": [1, 1, 1, 1.15]})
    for row, (name, pair) in enumerate((("global views", global_pair), ("local views", local_pair))):
        v1, v2 = _slice2d(pair[0]), _slice2d(pair[1])
        for col, (title, a) in enumerate((("slice", img), ("view 1", v1), ("view 2", v2))):
            ax = axes[row, col]
            ax.imshow(a, cmap="gray", vmin=0, vmax=1)
            _mark(ax, y, x)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if row == 0 else "")
        axes[row, 0].set_ylabel(name, fontsize="large")
        ax = axes[row, 3]
        brain = (img > 0.02).ravel()
        ax.scatter(v1.ravel()[brain], v2.ravel()[brain], s=2, alpha=0.25, color="C0" if row == 0 else "C2",
                   rasterized=True)
        corr = np.corrcoef(v1.ravel()[brain], v2.ravel()[brain])[0, 1]
        ax.set_title(f"pixel by pixel (r = {corr:.2f})" if row == 0 else f"r = {corr:.2f}")
        ax.set_xlabel("view 1 intensity")
        ax.set_ylabel("view 2 intensity")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_aspect("equal")
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------------- regions
def draw_regions(ax, corners: Any, region_size: int, colours: Any = OTHER, linewidth: float = 1.0,
                 numbers: bool = False, alpha: float = 1.0, fill: bool = False) -> None:
    """Draw ``K x K`` regions (``corners (R, 2)`` = top-left (row, col) in feature-map pixels) on ``ax``.

    ``colours``: one colour, or one per region (``None`` skips that region).
    """
    corners = _np(corners).astype(int).reshape(-1, 2)
    if isinstance(colours, str) or colours is None:
        colours = [colours] * len(corners)
    k = int(region_size)
    for r, ((row, col), colour) in enumerate(zip(corners, colours)):
        if colour is None:
            continue
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), k, k, fill=fill, edgecolor=colour, linewidth=linewidth,
                               facecolor=colour if fill else "none", alpha=alpha))
        if numbers:
            ax.text(col + k / 2 - 0.5, row + k / 2 - 0.5, str(r), color=colour, ha="center", va="center",
                    fontsize=7, fontweight="bold")


def _show_on_grid(ax, image: np.ndarray, feature_shape: tuple[int, int]) -> None:
    """The slice stretched over the ``h x w`` feature grid (one unit = one feature pixel)."""
    h, w = feature_shape
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
              interpolation="bilinear")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_region_layouts(image: Any, feature_shape: tuple[int, int], region_size: int = 3,
                        fig: Figure | None = None) -> Figure:
    """The two region layouts of the local loss on one slice, in the coordinates of a decoder feature map.

    Left: the paper's sparse form, 13 fixed ``K x K`` regions (numbered). Right: the dense form, every region of
    a stride-``K`` grid over the whole map (the remainder at the right/bottom edge is cropped).
    """
    img = _slice2d(image)
    h, w = (int(s) for s in feature_shape)
    fig = fig or plt.figure(figsize=(9, 4.6))
    axes = fig.subplots(1, 2)
    sparse = local_region_corners(h, w, "sparse", region_size)
    dense = local_region_corners(h, w, "dense", region_size)
    _show_on_grid(axes[0], img, (h, w))
    draw_regions(axes[0], sparse, region_size, ANCHOR, linewidth=1.5, numbers=True)
    axes[0].set_title(f"sparse: 13 fixed {region_size}x{region_size} regions\non a {h}x{w} map")
    _show_on_grid(axes[1], img, (h, w))
    gy, gx = h // region_size, w // region_size
    colours = [("#ff7f0e" if (i // gx + i % gx) % 2 else "#1f77b4") for i in range(len(dense))]
    draw_regions(axes[1], dense, region_size, colours, linewidth=0.6, fill=True, alpha=0.2)
    axes[1].set_title(f"dense: a {gy}x{gx} grid = {len(dense)} regions\n(every other region is a negative)")
    fig.tight_layout()
    return fig


def plot_local_masks(views: Sequence[Any], image: Any, volume: Any, partition: Any, feature_shape: tuple[int, int],
                     region_size: int = 3, anchor: tuple[int, int] = (0, 4), n_negatives: int | None = 10,
                     strategies: Sequence[str] = ("LR", "LD"), fig: Figure | None = None) -> Figure:
    """Positives and negatives of one anchor region under each local strategy (sparse form).

    Args:
        views: ``(view1, view2)``, each ``(B, H, W)`` or ``(B, 1, H, W)``: the two local views of ``B`` slices.
        image, volume, partition: ``(B,)`` metadata of the slices.
        feature_shape: ``(h, w)`` of the decoder block the loss is taken from.
        anchor: ``(slice, region)``; the anchor is that region in view 1.
        n_negatives: negatives per anchor (both views), as in :func:`~glcl_core.contrastive.local_masks.local_masks`.

    One row per strategy, one column per slice and view. Yellow: the anchor; green: its positives; red: its
    negatives; thin blue: regions that play no part for this anchor.
    """
    v1, v2 = (_np(v) for v in views)
    v1 = v1.reshape(-1, *v1.shape[-2:])
    v2 = v2.reshape(-1, *v2.shape[-2:])
    meta = [torch.as_tensor(_np(m)).long() for m in (image, volume, partition)]
    b = v1.shape[0]
    h, w = (int(s) for s in feature_shape)
    corners = local_region_corners(h, w, "sparse", region_size)
    n_regions = len(corners)
    slice_a, region_a = (int(a) for a in anchor)
    row_a = slice_a * 2 * n_regions + region_a  # view 1 of (slice_a, region_a)
    fig = fig or plt.figure(figsize=(1.75 * 2 * b + 0.6, 2.1 * len(strategies) + 0.5))
    axes = np.atleast_2d(fig.subplots(len(strategies), 2 * b))
    for s_i, strategy in enumerate(strategies):
        positives, negatives = local_masks(strategy, *meta, n_regions, n_negatives=n_negatives)
        pos = positives.to_dense()[row_a].reshape(b, 2, n_regions).numpy()
        neg = negatives.to_dense()[row_a].reshape(b, 2, n_regions).numpy()
        pos[slice_a, 0, region_a] = False
        for j in range(b):
            for v, view in enumerate((v1[j], v2[j])):
                ax = axes[s_i, 2 * j + v]
                _show_on_grid(ax, view, (h, w))
                colours = [OTHER] * n_regions
                width = [0.5] * n_regions
                for r in range(n_regions):
                    if pos[j, v, r]:
                        colours[r] = POSITIVE
                    elif neg[j, v, r]:
                        colours[r] = NEGATIVE
                    if j == slice_a and v == 0 and r == region_a:
                        colours[r] = ANCHOR
                for r in range(n_regions):  # thin ones first, then the ones that matter on top
                    if colours[r] == OTHER:
                        draw_regions(ax, corners[r:r + 1], region_size, OTHER, linewidth=0.6)
                for r in range(n_regions):
                    if colours[r] != OTHER:
                        draw_regions(ax, corners[r:r + 1], region_size, colours[r], linewidth=2.0)
                if s_i == 0:
                    ax.set_title(f"vol {int(meta[1][j])}, part {int(meta[2][j])}\nview {v + 1}", fontsize=8)
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        axes[s_i, 0].set_ylabel(f"{strategy}\n{n_pos} pos, {n_neg} neg", fontsize=10)
    handles = [Rectangle((0, 0), 1, 1, fill=False, edgecolor=c, linewidth=2) for c in (ANCHOR, POSITIVE, NEGATIVE)]
    fig.legend(handles, ["anchor", "positive", "negative"], loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


# ------------------------------------------------------------------------------------------ similarity maps
def plot_similarity(image: Any, maps: Mapping[str, Any], y: int, x: int, label: Any = None,
                    stretch: bool = False, fig: Figure | None = None) -> Figure:
    """Similarity of every pixel's feature with the feature at ``(y, x)``, for several models.

    Args:
        image: the slice ``(H, W)``.
        maps: ``{name: (C, h, w)}`` feature maps of that slice (upsampled to ``H x W`` if coarser).
        y, x: the chosen pixel (image coordinates).
        label: optional label slice, drawn as contours on the first panel.
        stretch: colour each map from its own minimum to 1 instead of the fixed ``[-1, 1]``.
    """
    img = _slice2d(image)
    size = img.shape
    fig = fig or plt.figure(figsize=(2.9 * (len(maps) + 1) + 0.8, 3.2), layout="constrained")
    axes = fig.subplots(1, len(maps) + 1)
    axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
    if label is not None:
        lab = _slice2d(label)
        cmap = label_colormap(int(lab.max()) + 1)
        for k in range(1, int(lab.max()) + 1):
            if (lab == k).any():
                axes[0].contour(lab == k, levels=[0.5], colors=[cmap(k)], linewidths=0.8)
    _mark(axes[0], y, x)
    axes[0].set_title(f"slice, pixel ({y}, {x})")
    image_artist = None
    for ax, (name, f) in zip(axes[1:], maps.items()):
        sim = similarity_map(f, y, x, size=size)
        lo = float(sim.min())
        vmin = min(lo, 0.999) if stretch else -1.0
        image_artist = ax.imshow(sim, cmap="RdBu_r" if not stretch else "magma", vmin=vmin, vmax=1.0)
        _mark(ax, y, x)
        ax.set_title(f"{name}\nmin {lo:.2f}, median {float(np.median(sim)):.2f}", fontsize=9)
        if stretch:
            fig.colorbar(image_artist, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if not stretch and image_artist is not None:
        fig.colorbar(image_artist, ax=list(axes[1:]), fraction=0.025, pad=0.02, label="cosine similarity")
    return fig


def similarity_explorer(image: Any, maps: Mapping[str, Any], label: Any = None,
                        class_names: Sequence[str] | None = None, point: tuple[int, int] | None = None,
                        stretch: bool = False) -> widgets.VBox:
    """Choose a pixel (sliders, or a landmark deep inside each tissue class of ``label``) and see how similar
    every other pixel's feature is, for each model in ``maps`` (``{name: (C, h, w)}`` of the same slice).

    Returns ``VBox([controls, Output])`` with the first frame drawn (``point``, default the first non-background
    landmark or the centre), so the saved notebook shows it without a kernel.
    """
    img = _slice2d(image)
    h, w = img.shape
    marks = landmarks(_slice2d(label), class_names) if label is not None else {}
    if point is None:
        inner = [p for name, p in marks.items() if name not in ("background", "class 0")]
        point = inner[-1] if inner else (h // 2, w // 2)
    y_slider = widgets.IntSlider(value=int(point[0]), min=0, max=h - 1, description="y (row)",
                                 continuous_update=False, layout=widgets.Layout(width="280px"))
    x_slider = widgets.IntSlider(value=int(point[1]), min=0, max=w - 1, description="x (column)",
                                 continuous_update=False, layout=widgets.Layout(width="280px"))
    options = [("(sliders)", None)] + [(f"{name} {p}", p) for name, p in marks.items()]
    chooser = widgets.Dropdown(options=options, value=None, description="landmark",
                               layout=widgets.Layout(width="300px"))
    stretch_box = widgets.Checkbox(value=bool(stretch), description="stretch colours", indent=False)
    output = widgets.Output()
    busy = {"moving": False}

    def render(*_) -> None:
        if busy["moving"]:
            return
        fig = plot_similarity(img, maps, y_slider.value, x_slider.value, label=label, stretch=stretch_box.value)
        show_in(output, fig)
        plt.close(fig)

    def jump(change) -> None:
        if change["new"] is None:
            return
        busy["moving"] = True
        try:
            y_slider.value, x_slider.value = change["new"]
        finally:
            busy["moving"] = False
        render()

    chooser.observe(jump, names="value")
    for control in (y_slider, x_slider, stretch_box):
        control.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HBox([chooser, y_slider, x_slider, stretch_box]), output])
