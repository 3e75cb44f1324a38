"""Figures of volumes: slices with their labels, partitions, fields of view and partition means.
Nothing in glcl_core imports this module.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state, no ``plt.show``), so they work under Agg,
in tests and in notebooks alike (a returned Figure is rendered by Jupyter's inline backend).
"""
from __future__ import annotations

from collections.abc import Sequence

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


# ----------------------------------------------------------------------------------------------- chapter 1


def plot_slice(volume: Volume, z: int, n_partitions: int = 4, show_label: bool = True, label_alpha: float = 0.4,
               fig: Figure | None = None) -> Figure:
    """One slice of a volume (the slice browser's frame).

    Left: the side view with partition bands and a line at slice ``z``. Right: slice ``z`` with the label overlay
    (when ``show_label`` and the volume is labelled), framed in its partition's colour.
    """
    z = int(np.clip(z, 0, volume.n_slices - 1))
    partition = volume.partitions(n_partitions)
    palette = partition_colours(n_partitions)
    n_classes = int(volume.label.max()) + 1 if show_label and volume.label is not None and volume.label.size else 0
    if fig is None:
        fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    else:
        fig.clear()
    side, ax = fig.subplots(1, 2, width_ratios=[1, 1.6])
    draw_side_view(side, volume, partition, palette, np.array([], dtype=int))
    side.axhline(z, color="red", lw=1.2)
    draw_slice(ax, volume, z, n_classes, label_alpha)
    for spine in ax.spines.values():
        spine.set_edgecolor(palette[partition[z]])
        spine.set_linewidth(4)
    ax.set_title(f"slice z={z} of {volume.n_slices}: partition {partition[z]} of {n_partitions}, "
                 f"position {volume.positions[z]:.2f}", fontsize=9)
    if n_classes > 1:
        cmap = label_colormap(n_classes)
        handles = [Patch(color=cmap(k), alpha=min(1.0, label_alpha + 0.3), label=f"class {k}")
                   for k in range(1, n_classes)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.suptitle(volume.name, fontsize=10)
    return fig


def plot_partitions(volume: Volume, n_partitions: int = 4, fig: Figure | None = None) -> Figure:
    """How a volume is cut into S partitions, and its slice positions.

    Left: the side view with one coloured band per partition. Right: the position ``(k + 1) / Z`` of every slice
    against its index ``k`` (continuous, PCL), coloured by partition (coarse, equal bins, G^D), with the bin
    edges ``s / S`` dashed and each partition's slice count.
    """
    partition = volume.partitions(n_partitions)
    positions = volume.positions
    palette = partition_colours(n_partitions)
    if fig is None:
        fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    else:
        fig.clear()
    side, ax = fig.subplots(1, 2, width_ratios=[1, 1.5])
    draw_side_view(side, volume, partition, palette, np.array([], dtype=int))
    k = np.arange(volume.n_slices)
    sizes = np.bincount(partition, minlength=n_partitions)
    for s in range(n_partitions):
        members = partition == s
        ax.scatter(k[members], positions[members], color=palette[s], s=14, zorder=3,
                   label=f"partition {s}: {sizes[s]} slices")
    for s in range(1, n_partitions):
        ax.axhline(s / n_partitions, color="grey", lw=0.8, ls="--")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
              ncol=1 if n_partitions <= 12 else 2)
    ax.set_xlim(-1, volume.n_slices)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("slice index k")
    ax.set_ylabel("position p = (k + 1) / Z")
    ax.set_title(f"{volume.n_slices} slices, S = {n_partitions}: bins of width 1/S", fontsize=9)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{volume.name}: partitions and positions", fontsize=10)
    return fig


def plot_field_of_view(volumes: list[Volume], n_partitions: int = 4, fig: Figure | None = None) -> Figure:
    """Each volume's slices along the slice axis in scanner mm, one row per volume, coloured by partition.

    Where the fields of view differ, partition s of one volume covers other anatomy than partition s of another:
    the coloured segments do not line up.
    """
    from glcl_core.analysis.slices import field_of_view_table, slice_coordinates

    table = field_of_view_table(volumes, n_partitions)
    palette = partition_colours(n_partitions)
    if fig is None:
        fig = Figure(figsize=(8.0, 0.8 + 0.27 * len(volumes)), layout="constrained")
    else:
        fig.clear()
    ax = fig.add_subplot()
    for row, v in enumerate(volumes):
        coords = slice_coordinates(v)
        half = v.spacing[0] / 2
        parts = v.partitions(n_partitions)
        for s in range(n_partitions):
            inside = coords[parts == s]
            ax.barh(row, inside[-1] - inside[0] + 2 * half, left=inside[0] - half, height=0.7, color=palette[s],
                    edgecolor="white", lw=0.5)
    ax.axvline(table["start"].median(), color="black", lw=0.8, ls=":", label="median first slice")
    ax.axvline(table["end"].median(), color="black", lw=0.8, ls="--", label="median last slice")
    ax.set_yticks(range(len(volumes)), [f"{v.name} ({v.n_slices})" for v in volumes], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("slice-axis coordinate (mm; for the embedded data: world z, inferior -> superior)")
    handles = [Patch(color=palette[s], label=f"partition {s}") for s in range(n_partitions)]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"Fields of view and partitions (S = {n_partitions}); label: name (slices)", fontsize=9)
    return fig


def plot_partition_means(per_volume: np.ndarray, fig: Figure | None = None) -> Figure:
    """The mean slice of each partition over volumes (top) and its spread over volumes (bottom).

    Args:
        per_volume: ``(V, S, H, W)`` from :func:`glcl_core.analysis.slices.partition_mean_slices`.
    """
    n_volumes, n_partitions = per_volume.shape[:2]
    mean, spread = per_volume.mean(axis=0), per_volume.std(axis=0)
    palette = partition_colours(n_partitions)
    if fig is None:
        fig = Figure(figsize=(1.9 * n_partitions + 0.8, 4.2), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(2, n_partitions, squeeze=False)
    top = max(float(spread.max()), 1e-6)
    for s in range(n_partitions):
        axes[0, s].imshow(mean[s], cmap="gray", vmin=0.0, vmax=1.0)
        axes[0, s].set_title(f"partition {s}", fontsize=9, color=palette[s] * np.array([0.8, 0.8, 0.8, 1.0]))
        shown = axes[1, s].imshow(spread[s], cmap="magma", vmin=0.0, vmax=top)
        for row in range(2):
            axes[row, s].set_xticks([])
            axes[row, s].set_yticks([])
            for spine in axes[row, s].spines.values():
                spine.set_edgecolor(palette[s])
                spine.set_linewidth(3)
    axes[0, 0].set_ylabel("mean", fontsize=9)
    axes[1, 0].set_ylabel("std over volumes", fontsize=9)
    fig.colorbar(shown, ax=axes[1, :].tolist(), shrink=0.8, pad=0.01)
    fig.suptitle(f"Mean slice of each partition over {n_volumes} volumes (each volume weighs the same)",
                 fontsize=10)
    return fig


def plot_slice_similarity(similarity: np.ndarray, sample, n_partitions: int, by_distance=None,
                          contrast=None, kind: str = "correlation", fig: Figure | None = None) -> Figure:
    """Cross-slice similarity ordered by partition, then position (left), and against the position gap (right).

    Args:
        similarity: ``(N, N)`` from :func:`glcl_core.analysis.slices.slice_similarity`.
        sample: the :class:`glcl_core.analysis.slices.SliceSample` it was computed on.
        by_distance: optional DataFrame from :func:`glcl_core.analysis.slices.similarity_by_distance` (right panel).
        contrast: optional :class:`glcl_core.analysis.slices.PartitionContrast`, drawn as two horizontal lines.
    """
    order = sample.order(n_partitions)
    parts = sample.partitions(n_partitions)[order]
    matrix = np.asarray(similarity)[np.ix_(order, order)]
    palette = partition_colours(n_partitions)
    if fig is None:
        fig = Figure(figsize=(10.0 if by_distance is not None else 5.6, 4.6), layout="constrained")
    else:
        fig.clear()
    if by_distance is not None:
        ax, curve = fig.subplots(1, 2, width_ratios=[1.15, 1])
    else:
        ax, curve = fig.add_subplot(), None
    low = float(np.percentile(matrix, 2))
    shown = ax.imshow(matrix, cmap="viridis", vmin=low, vmax=1.0, interpolation="nearest")
    edges = np.flatnonzero(np.diff(parts)) + 0.5
    for e in edges:
        ax.axhline(e, color="white", lw=0.8)
        ax.axvline(e, color="white", lw=0.8)
    centres = [np.flatnonzero(parts == s).mean() for s in range(n_partitions) if np.any(parts == s)]
    ax.set_xticks(centres, [f"P{s}" for s in range(n_partitions) if np.any(parts == s)], fontsize=8)
    ax.set_yticks(centres, [f"P{s}" for s in range(n_partitions) if np.any(parts == s)], fontsize=8)
    for tick, s in zip(ax.get_xticklabels() + ax.get_yticklabels(), list(range(n_partitions)) * 2):
        tick.set_color(palette[s] * np.array([0.8, 0.8, 0.8, 1.0]))
    ax.set_title(f"{len(sample)} slices of {len(sample.names)} volumes, sorted by partition then position",
                 fontsize=9)
    fig.colorbar(shown, ax=ax, shrink=0.8, label=kind)
    if curve is not None:
        curve.errorbar(by_distance["distance"], by_distance["mean"], yerr=by_distance["std"], marker="o", ms=4,
                       capsize=2, color="tab:blue", label="pairs from different volumes")
        if contrast is not None:
            curve.axhline(contrast.same, color="tab:green", ls="--", lw=1,
                          label=f"same partition (S={contrast.n_partitions}): {contrast.same:.2f}")
            curve.axhline(contrast.other, color="tab:red", ls="--", lw=1,
                          label=f"other partitions: {contrast.other:.2f}")
        curve.set_xlabel("position gap |p_i - p_j|")
        curve.set_ylabel(f"mean {kind} (+- std)")
        curve.set_xlim(0, 1)
        curve.grid(alpha=0.3)
        curve.legend(fontsize=8, loc="lower left")
        curve.set_title("similarity falls with the position gap", fontsize=9)
    return fig


def plot_subject_gallery(rows: dict[str, list[Volume]], n_subjects: int = 6, fig: Figure | None = None,
                         class_names: Sequence[str] | None = None) -> Figure:
    """One row of subjects per data set (e.g. per embedded preset), each at its slice with the most brain.

    Args:
        rows: row title -> volumes (labelled); the first ``n_subjects`` of each are shown as image, with the
            tissue labels (opaque colours over the image) in the row below.
        class_names: names of classes 0..K-1 for the colour legend (default: the embedded data's tissue names
            when there are four classes, else "class k").
    """
    n_cols = min(n_subjects, max(len(v) for v in rows.values()))
    if fig is None:
        fig = Figure(figsize=(1.45 * n_cols, 3.0 * len(rows)), layout="constrained")
    else:
        fig.clear()
    axes = np.asarray(fig.subplots(2 * len(rows), n_cols, squeeze=False))
    for r, (title, volumes) in enumerate(rows.items()):
        for c in range(n_cols):
            image_ax, label_ax = axes[2 * r, c], axes[2 * r + 1, c]
            for ax in (image_ax, label_ax):
                ax.set_xticks([])
                ax.set_yticks([])
            if c >= len(volumes):
                image_ax.set_visible(False)
                label_ax.set_visible(False)
                continue
            volume = volumes[c]
            z = int(np.argmax((volume.label > 0).reshape(volume.n_slices, -1).sum(axis=1)))
            draw_slice(image_ax, volume, z, 0, 0.0)
            draw_slice(label_ax, volume, z, int(volume.label.max()) + 1, 1.0)
            image_ax.set_title(volume.name, fontsize=8)
            if c == 0:
                image_ax.set_ylabel(title, fontsize=9)
    n_classes = max(int(v.label.max()) + 1
                    for volumes in rows.values() for v in volumes[:n_cols] if v.label is not None)
    if class_names is None:
        from glcl_core.data.embedded import LABEL_NAMES

        class_names = ([LABEL_NAMES[str(k)] for k in range(4)] if n_classes == 4
                       else [f"class {k}" for k in range(n_classes)])
    cmap = label_colormap(n_classes)
    handles = [Patch(color=cmap(k), label=str(class_names[k])) for k in range(1, n_classes)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)
    return fig
