"""Figures for the book. Nothing in glcl_core imports this module.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state, no ``plt.show``), so they work under Agg,
in tests and in notebooks alike (a returned Figure is rendered by Jupyter's inline backend).
"""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from glcl_core.data.volume import Volume


def partition_colours(n_partitions: int) -> np.ndarray:
    """``(S, 4)`` RGBA: an ordinal palette, so neighbouring partitions get neighbouring colours."""
    return colormaps["viridis"](np.linspace(0.05, 0.95, max(1, n_partitions)))


def label_colormap(n_classes: int) -> ListedColormap:
    """Class k >= 1 -> tab10 colour k - 1 (class 0 is left transparent by masking)."""
    base = colormaps["tab10"]
    return ListedColormap([base(max(0, k - 1) % 10) for k in range(max(2, n_classes))])


def chosen_slices(n_total: int, n_shown: int) -> np.ndarray:
    """Up to ``n_shown`` slice indices spread evenly from the first to the last slice."""
    return np.unique(np.round(np.linspace(0, n_total - 1, min(n_shown, n_total))).astype(int))


def plot_volume(volume: Volume, n_partitions: int = 4, n_slices: int = 8, fig: Figure | None = None,
                label_alpha: float = 0.4, columns: int = 4) -> Figure:
    """A volume's slices with its label overlay and partition colouring.

    Left: a side view through the middle column (slice axis upward, i.e. ``image[:, :, W // 2]`` of shape
    ``(Z, H)``) with one coloured band per partition and lines at the slices shown. Right: ``n_slices`` slices
    spread along the volume, framed in their partition's colour and titled with index, partition and position.

    Args:
        volume: the volume (``image (Z, H, W)``, ``label`` or None).
        n_partitions: number of partitions S (raises DataError when Z < S, like :meth:`Volume.partitions`).
        fig: figure to draw into (cleared), or None for a new one.
    Returns:
        The Figure.
    """
    partition = volume.partitions(n_partitions)
    positions = volume.positions
    shown = chosen_slices(volume.n_slices, n_slices)
    palette = partition_colours(n_partitions)
    n_classes = int(volume.label.max()) + 1 if volume.label is not None and volume.label.size else 0

    rows = int(np.ceil(len(shown) / columns))
    if fig is None:
        fig = Figure(figsize=(2.2 * (columns + 1.3), 2.3 * rows + 0.6), layout="constrained")
    else:
        fig.clear()
    grid = fig.add_gridspec(rows, columns + 1, width_ratios=[1.3] + [1] * columns)

    side = fig.add_subplot(grid[:, 0])
    draw_side_view(side, volume, partition, palette, shown)

    for i, z in enumerate(shown):
        ax = fig.add_subplot(grid[i // columns, 1 + i % columns])
        draw_slice(ax, volume, int(z), n_classes, label_alpha)
        colour = palette[partition[z]]
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        ax.set_title(f"z={z}  part {partition[z]}  pos {positions[z]:.2f}", fontsize=8, color="black")

    handles = [Patch(color=palette[s], label=f"partition {s}") for s in range(n_partitions)]
    if n_classes > 1:
        cmap = label_colormap(n_classes)
        handles += [Patch(color=cmap(k), alpha=label_alpha + 0.3, label=f"class {k}") for k in range(1, n_classes)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.suptitle(f"{volume.name}: {volume.n_slices} slices, spacing "
                 f"{' x '.join(f'{s:.2f}' for s in volume.spacing)} mm (z, y, x), S = {n_partitions}", fontsize=10)
    return fig


def draw_side_view(ax, volume: Volume, partition: np.ndarray, palette: np.ndarray, shown: np.ndarray) -> None:
    """Side view ``(Z, H)`` with partition bands; aspect follows the physical spacing."""
    z_spacing, y_spacing = volume.spacing[0], volume.spacing[1]
    side = volume.image[:, :, volume.image.shape[2] // 2]  # (Z, H)
    ax.imshow(side, cmap="gray", origin="lower", aspect=z_spacing / y_spacing, interpolation="nearest")
    for s in range(len(palette)):
        members = np.flatnonzero(partition == s)
        if members.size:
            ax.axhspan(members[0] - 0.5, members[-1] + 0.5, color=palette[s], alpha=0.3, lw=0)
    for z in shown:
        ax.axhline(z, color="white", lw=0.6, ls=":")
    ax.set_xticks([])
    ax.set_ylabel("slice index z")
    ax.set_title("side view (middle column)", fontsize=8)


def draw_slice(ax, volume: Volume, z: int, n_classes: int, label_alpha: float) -> None:
    ax.imshow(volume.image[z], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if volume.label is not None and n_classes > 1:
        overlay = np.ma.masked_equal(volume.label[z], 0)
        ax.imshow(overlay, cmap=label_colormap(n_classes), vmin=0, vmax=max(1, n_classes - 1), alpha=label_alpha,
                  interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
