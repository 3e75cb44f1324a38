"""Figures for the global strategies: paired views, loss curves and training health, UMAP layouts and
cross-volume similarity by position.

The mask figures and the PCL threshold explorer (:mod:`glcl_core.viz.masks`: :func:`plot_masks`,
:func:`mask_order`, :func:`plot_threshold_masks`, :func:`threshold_explorer`) are re-exported here, so
``from glcl_core.viz import embeddings as viz; viz.plot_masks(...)`` keeps working.

Figures are :class:`matplotlib.figure.Figure` objects (no pyplot state), like :mod:`glcl_core.viz.volumes`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from glcl_core.analysis.batch_masks import batch_table
from glcl_core.viz.masks import (  # noqa: F401  re-exported: viz.plot_masks etc. in the chapters
    FALSE_NEGATIVE,
    MASK_COLOURS,
    MASK_LABELS,
    mask_order,
    plot_masks,
    plot_threshold_masks,
    threshold_explorer,
)
from glcl_core.viz.volumes import partition_colours

_KNOWN = ("GR", "GD-", "GD", "PCL", "GD+LR", "GD+LD", "PCL+LR")


def strategy_colour(name: str):
    """One colour per encoder, the same in every figure of the book (random init grey, raw pixels black)."""
    if name.startswith("random"):
        return (0.45, 0.45, 0.45, 1.0)
    if name.startswith("pixels"):
        return (0.0, 0.0, 0.0, 1.0)
    base = name.split(" ")[0]
    index = _KNOWN.index(base) if base in _KNOWN else len(_KNOWN) + sum(map(ord, base)) % 3
    return colormaps["tab10"](index % 10)


# ---------------------------------------------------------------------------------------------------- views
def plot_views(batch, views, n: int = 4, fig: Figure | None = None) -> Figure:
    """The first ``n`` slices of a batch (top row) and their two augmented views (rows 2 and 3).

    ``views``: :func:`~glcl_core.augment.make_views` of ``batch`` (all first views, then all second views).
    """
    b = len(batch)
    if len(views) != 2 * b:
        raise ValueError(f"views must hold 2 x {b} images (make_views of the batch), got {len(views)}")
    n = int(min(n, b))
    meta = batch_table(batch)
    if fig is None:
        fig = Figure(figsize=(2.0 * n, 6.4), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(3, n, squeeze=False)
    rows = [(batch.images, "slice"), (views.images[:b], "view a"), (views.images[b:], "view b")]
    for r, (images, name) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c, 0].detach().float().cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
            if r == 0:
                ax.set_title(f"v{meta['volume'][c]} P{meta['partition'][c]} p={meta['position'][c]:.2f}",
                             fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------------- losses
def plot_loss_curves(histories: Mapping[str, pd.DataFrame], chance: Mapping[str, float] | None = None,
                     smooth: int = 1, fig: Figure | None = None) -> Figure:
    """Training loss against step, one line per run.

    With ``chance`` (``name -> loss at equal similarities``, :func:`~glcl_core.analysis.batch_masks.chance_loss`),
    each run gets a dashed line at its chance level, and a second panel shows ``loss / chance``: the losses of different
    strategies have different scales (different numbers of positives and negatives), their ratios to chance can be
    compared. ``smooth``: rolling-mean window over logged steps.
    """
    if not histories:
        raise ValueError("no histories to plot")
    panels = 2 if chance else 1
    if fig is None:
        fig = Figure(figsize=(5.2 * panels, 3.4), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for name, history in histories.items():
        colour = strategy_colour(name)
        loss = history["loss"].rolling(max(1, int(smooth)), min_periods=1).mean()
        axes[0].plot(history["step"], loss, color=colour, label=name)
        if chance and name in chance:
            axes[0].axhline(chance[name], color=colour, ls="--", lw=0.9)
            axes[1].plot(history["step"], loss / chance[name], color=colour, label=name)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss" + (" (dashed: chance level)" if chance else ""))
    axes[0].legend(fontsize=8)
    if chance:
        axes[1].axhline(1.0, color="0.5", ls="--", lw=0.9)
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("loss / chance level")
    return fig


HEALTH_PANELS = (
    ("loss_over_chance", "loss / chance (training batches)", 1.0),
    ("retrieval_top1", "top-1 positive retrieval (validation)", None),
    ("effective_rank", "effective rank (validation)", 2.0),
)


def plot_health(histories: Mapping[str, pd.DataFrame], smooth: int = 1, fig: Figure | None = None,
                title: str | None = None) -> Figure:
    """Training health of pre-training stages, one line per run: loss / chance level on the training batches
    (the validation batches' ratio dotted), top-1 positive retrieval and effective rank on fixed validation
    batches (:mod:`glcl_core.contrastive.health`). Grey dashed lines: chance (1) and the collapse level (rank 2).
    ``smooth``: rolling-mean window over logged steps for the training ratio."""
    if not histories:
        raise ValueError("no histories to plot")
    if fig is None:
        fig = Figure(figsize=(12.0, 3.3), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(1, len(HEALTH_PANELS))
    for name, history in histories.items():
        colour = strategy_colour(name)
        for ax, (column, label, _) in zip(axes, HEALTH_PANELS):
            if column not in history:
                continue
            values = history[column]
            if column == "loss_over_chance":
                values = values.rolling(max(1, int(smooth)), min_periods=1).mean()
                if "val_loss_over_chance" in history:
                    ax.plot(history["step"], history["val_loss_over_chance"], color=colour, ls=":", lw=1.2)
            ax.plot(history["step"], values, color=colour, label=name)
    for ax, (_, label, level) in zip(axes, HEALTH_PANELS):
        if level is not None:
            ax.axhline(level, color="0.5", ls="--", lw=0.9)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_ylim(bottom=0)
    handles = [Line2D([], [], color=strategy_colour(n), label=n) for n in histories]
    handles.append(Line2D([], [], color="0.3", ls=":", label="validation loss / chance"))
    axes[0].legend(handles=handles, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# ------------------------------------------------------------------------------------------------------ UMAP
def _colour_values(meta: pd.DataFrame, by: str):
    """(colours per point, legend handles or None, colormap for a colourbar or None)."""
    if by == "partition":
        parts = meta["partition"].to_numpy()
        palette = partition_colours(int(parts.max()) + 1)
        handles = [Line2D([], [], ls="", marker="o", color=palette[s], label=f"P{s}") for s in np.unique(parts)]
        return palette[parts], handles, None
    if by == "position":
        cmap = colormaps["plasma"]
        return cmap(meta["position"].to_numpy()), None, cmap
    if by in meta.columns:  # "volume", or any other categorical column (e.g. a subject's contrast family)
        names = meta[by].astype(str).to_numpy()
        unique = list(dict.fromkeys(names))
        cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
        lookup = {u: cmap(i % cmap.N) for i, u in enumerate(unique)}
        handles = [Line2D([], [], ls="", marker="o", color=lookup[u], label=u) for u in unique]
        return np.array([lookup[u] for u in names]), handles, None
    raise ValueError(f"colour_by entries must be 'partition', 'position' or a column of the metadata "
                     f"({', '.join(meta.columns)}), got {by!r}")


def plot_umap(layouts: Mapping[str, np.ndarray] | np.ndarray, metadata: pd.DataFrame,
              colour_by: Sequence[str] | str = ("partition", "volume"), scores: pd.DataFrame | None = None,
              point_size: float = 9.0, max_cols: int = 3, fig: Figure | None = None) -> Figure:
    """2-D layouts of several encoders, one block of panels per colouring (legend or colour bar beside it).

    Args:
        layouts: ``name -> (N, 2)`` (e.g. :func:`~glcl_core.analysis.embeddings.umap_2d` of each encoder's
            embeddings of the same slices) or a single ``(N, 2)`` array.
        metadata: the slices' table (from :func:`~glcl_core.analysis.embeddings.embed_slices`).
        colour_by: ``"partition"`` (ordinal palette), ``"position"`` (continuous, with a colour bar) and/or
            ``"volume"`` or any other column of ``metadata`` (categorical, e.g. a subject's contrast family).
        scores: optional table indexed by encoder name; its ``partition_accuracy`` / ``position_error`` are
            added to the panel titles.
        max_cols: panels per row; more encoders wrap onto further rows, so that titles and legends stay legible
            at a book page's width.
    """
    if isinstance(layouts, np.ndarray):
        layouts = {"": layouts}
    colour_by = [colour_by] if isinstance(colour_by, str) else list(colour_by)
    for name, xy in layouts.items():
        if len(xy) != len(metadata):
            raise ValueError(f"layout {name!r} has {len(xy)} points but metadata has {len(metadata)} rows")
    n_cols = min(len(layouts), max(1, int(max_cols)))
    rows_per_block = -(-len(layouts) // n_cols)
    block_height = 2.75 * rows_per_block + 0.45
    if fig is None:
        fig = Figure(figsize=(2.75 * n_cols + 1.7, block_height * len(colour_by)), layout="constrained")
    else:
        fig.clear()
    blocks = np.atleast_1d(fig.subfigures(len(colour_by), 1))
    for block, by in zip(blocks, colour_by):
        colours, handles, cmap = _colour_values(metadata, by)
        axes = block.subplots(rows_per_block, n_cols, squeeze=False).ravel()
        for ax in axes[len(layouts):]:
            ax.set_axis_off()
        for ax, (name, xy) in zip(axes, layouts.items()):
            ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=point_size, linewidths=0)
            ax.set_xticks([])
            ax.set_yticks([])
            title = name
            if scores is not None and name in scores.index:
                parts = []
                if "partition_accuracy" in scores:
                    parts.append(f"kNN partition {scores.loc[name, 'partition_accuracy']:.0%}")
                if "position_error" in scores:
                    parts.append(f"|dp| {scores.loc[name, 'position_error']:.3f}")
                title += "\n" + ", ".join(parts)
            ax.set_title(title, fontsize=10)
        block.suptitle(f"coloured by {by}", fontsize=11, x=0.02, ha="left")
        if handles is not None:
            block.legend(handles=handles, fontsize=9, loc="outside right center", frameon=False,
                         handletextpad=0.1, title=by, title_fontsize=9)
        elif cmap is not None:
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import Normalize

            bar = block.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=list(axes[:len(layouts)]),
                                 label="position p", shrink=0.8)
            bar.ax.tick_params(labelsize=9)
    return fig


# ----------------------------------------------------------------------------------- similarity by position
def plot_position_similarity(maps: Mapping[str, np.ndarray], n_partitions: int | None = None,
                             threshold: float | None = None, max_cols: int = 3, fig: Figure | None = None) -> Figure:
    """Cross-volume similarity maps (:func:`~glcl_core.analysis.embeddings.similarity_by_position`), one panel per
    encoder, on **one** colour scale (2nd to 98th percentile of all maps) with one colour bar, so that panels compare.
    White lines: partition boundaries ``s / S``. Dashed lines: ``|p_a - p_b| = threshold`` (PCL's positives lie
    between them). ``max_cols`` panels per row."""
    if not maps:
        raise ValueError("no similarity maps to plot")
    n = len(maps)
    n_cols = min(n, max(1, int(max_cols)))
    n_rows = -(-n // n_cols)
    if fig is None:
        fig = Figure(figsize=(2.8 * n_cols + 1.0, 2.9 * n_rows + 0.2), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    finite = np.concatenate([m[np.isfinite(m)] for m in maps.values()])
    lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
    for k, (ax, (name, m)) in enumerate(zip(axes, maps.items())):
        image = ax.imshow(m, origin="lower", extent=(0, 1, 0, 1), cmap="magma", vmin=lo, vmax=hi)
        if n_partitions:
            for edge in np.arange(1, int(n_partitions)) / int(n_partitions):
                ax.axhline(edge, color="white", lw=0.8)
                ax.axvline(edge, color="white", lw=0.8)
        if threshold:
            line = np.array([0.0, 1.0])
            ax.plot(line, line + threshold, color="cyan", ls="--", lw=0.8)
            ax.plot(line, line - threshold, color="cyan", ls="--", lw=0.8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=10)
        if k // n_cols == n_rows - 1 or k + n_cols >= n:
            ax.set_xlabel("position of slice a")
        if k % n_cols == 0:
            ax.set_ylabel("position of slice b\n(another volume)")
    bar = fig.colorbar(image, ax=list(axes[:n]), shrink=0.8, pad=0.02)
    bar.set_label("mean cosine similarity", fontsize=10)
    bar.ax.tick_params(labelsize=9)
    return fig
