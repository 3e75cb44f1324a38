"""Figures for fine-tuning results: Dice against the number of labelled volumes, paired differences with their
confidence intervals (and a widget choosing the baseline), and validation Dice during fine-tuning.

The segmentation overlays (:mod:`glcl_core.viz.overlays`: :func:`plot_overlays`, :func:`load_predictions`,
:func:`overlay_browser`, :func:`slice_dice`, :func:`volume_dice`) are re-exported here, so
``from glcl_core.viz import segmentation as seg; seg.plot_overlays(...)`` keeps working.

Figures are :class:`matplotlib.figure.Figure` objects (no pyplot state), like :mod:`glcl_core.viz.volumes`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from glcl_core.analysis.results import strategy_order
from glcl_core.viz.overlays import (  # noqa: F401  re-exported: seg.plot_overlays etc. in the chapters
    ERROR_COLOUR,
    load_predictions,
    overlay_browser,
    plot_overlays,
    slice_dice,
    volume_dice,
)


def strategy_colour(name: str):
    """A fixed colour per initialisation, the same in every figure (random init in grey)."""
    from glcl_core.analysis.results import ORDER

    if name == "random":
        return (0.45, 0.45, 0.45, 1.0)
    palette = colormaps["tab10"]
    known = [s for s in ORDER if s != "random"]
    index = known.index(name) if name in known else len(known) + abs(hash(name)) % 3
    return palette(index % 10)


# ----------------------------------------------------------------------------------------------- Dice curves
def plot_dice(summary: pd.DataFrame, fig: Figure | None = None, title: str | None = None) -> Figure:
    """Mean Dice against the number of labelled volumes, one line per initialisation, error bars = sd over seeds.

    Args:
        summary: :func:`glcl_core.analysis.results.summary_table` (strategy, n_labelled, mean, sd, n_seeds), or
            :func:`~glcl_core.analysis.results.per_class_table` (with ``class``: one panel per class).
    Returns:
        The Figure. Points of different initialisations are shifted sideways a little so error bars do not hide
        each other; the x axis is the number of labelled volumes (log2 scale when there are 3 or more values).
    """
    if summary.empty:
        raise ValueError("empty summary: nothing to plot")
    panels = list(dict.fromkeys(summary["class"])) if "class" in summary.columns else [None]
    if fig is None:
        fig = Figure(figsize=(min(4.2 * len(panels), 13.0) + 1.8, 3.6), layout="constrained")
    else:
        fig.clear()
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)[0])
    strategies = strategy_order(summary["strategy"])
    counts = sorted(summary["n_labelled"].unique())
    log_x = len(counts) >= 3
    width = 0.06 if log_x else 0.05 * max(1, counts[-1] - counts[0] or 1)
    for ax, panel in zip(axes, panels):
        part = summary if panel is None else summary[summary["class"] == panel]
        for j, strategy in enumerate(strategies):
            rows = part[part["strategy"] == strategy].sort_values("n_labelled")
            if rows.empty:
                continue
            offset = (j - (len(strategies) - 1) / 2) * width
            x = rows["n_labelled"].to_numpy(float)
            x = x * 2.0 ** offset if log_x else x + offset
            ax.errorbar(x, rows["mean"], yerr=rows["sd"].fillna(0.0), marker="o", ms=5, capsize=3, lw=1.5,
                        color=strategy_colour(strategy), label=strategy)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(counts)
        ax.set_xticklabels([str(c) for c in counts])
        if len(counts) == 1:
            ax.set_xlim(counts[0] - 0.5, counts[0] + 0.5)
        ax.set_xlabel("labelled volumes")
        ax.grid(alpha=0.3)
        if panel is not None:
            ax.set_title(str(panel))
    axes[0].set_ylabel("mean foreground Dice (test)")
    seeds = summary["n_seeds"]
    note = f"error bars: sd over seeds ({seeds.min()}" + (f"-{seeds.max()}" if seeds.max() != seeds.min() else "") + \
        " seed" + ("s" if seeds.max() > 1 else "") + " per point)"
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, title="init")
    fig.suptitle(f"{title}\n{note}" if title else f"Test Dice with few labels; {note}", fontsize=10)
    return fig


def plot_paired(paired: pd.DataFrame, differences: pd.DataFrame | None = None, baseline: str = "random",
                level: float = 0.95, fig: Figure | None = None) -> Figure:
    """Paired differences to the baseline with their confidence intervals, one row per (strategy, n_labelled).

    Args:
        paired: :func:`glcl_core.analysis.results.paired_comparison`.
        differences: optional :func:`~glcl_core.analysis.results.paired_differences`: each seed's difference as a dot.
        level: the intervals' confidence level (as passed to ``paired_comparison``), for the legend.
    Returns:
        The Figure: a vertical line at 0 (no difference); an interval that does not cross it means the seeds agree
        on the sign of the effect (at the t-interval's level, with all its small-sample caveats).
    """
    if paired.empty:
        raise ValueError("no paired comparisons to plot (is the baseline in the results, with matching seeds?)")
    rows = paired.reset_index(drop=True)
    if fig is None:
        fig = Figure(figsize=(7.4, 0.45 * len(rows) + 1.5), layout="constrained")
    else:
        fig.clear()
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    for yi, (_, r) in zip(y, rows.iterrows()):
        colour = strategy_colour(r["strategy"])
        if np.isfinite(r["ci_low"]):
            ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=colour, lw=3, alpha=0.6, solid_capstyle="butt")
        ax.plot(r["mean_diff"], yi, "D", color=colour, ms=7, mec="black", mew=0.6)
        if differences is not None:
            d = differences[(differences["strategy"] == r["strategy"])
                            & (differences["n_labelled"] == r["n_labelled"])]["difference"]
            ax.plot(d, np.full(len(d), yi) + 0.22, "o", ms=3.5, color=colour, alpha=0.8, mew=0)
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r.strategy}, n={r.n_labelled} ({r.n_pairs} pair{'s' if r.n_pairs != 1 else ''})"
                        for r in rows.itertuples()])
    ax.set_xlabel(f"Dice difference to {baseline} (same labelled volumes and seed)")
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], marker="D", ls="", color="grey", mec="black", label="mean difference"),
               Line2D([], [], lw=3, color="grey", alpha=0.6, label=f"{level:.0%} t-interval")]
    if differences is not None:
        handles.append(Line2D([], [], marker="o", ls="", ms=3.5, color="grey", label="one seed"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(f"Paired comparison with {baseline} initialisation", fontsize=10)
    return fig


def plot_label_efficiency(efficiency: pd.DataFrame, baseline: str = "random", level: float = 0.95,
                          title: str | None = None, fig: Figure | None = None) -> Figure:
    """The label-efficiency figure: two panels sharing the x axis (labelled volumes, log2 scale).

    Args:
        efficiency: :func:`glcl_core.analysis.results.label_efficiency` (strategy, n_labelled, mean, sd, n_seeds,
            mean_diff, ci_low, ci_high, ...).
    Returns:
        The Figure. Left: mean test Dice against labelled volumes, one line per initialisation, band = sd over
        seeds. Right: each initialisation's mean paired difference to ``baseline`` with its t-interval (bars), and
        a line at 0; an interval above 0 means the seeds agree that pre-training helped at that count.
    """
    if efficiency.empty:
        raise ValueError("empty table: nothing to plot")
    if fig is None:
        # about the width of a book column at 100 dpi, so that the 9-11 pt text is not scaled down on the page
        fig = Figure(figsize=(8.0, 4.2), dpi=100, layout="constrained")
    else:
        fig.clear()
    left, right = fig.subplots(1, 2, sharex=True)
    counts = sorted(int(n) for n in efficiency["n_labelled"].unique())
    strategies = strategy_order(efficiency["strategy"])
    others = [s for s in strategies if s != baseline]
    # x offset factors: the initialisations' intervals side by side at each labelled count
    shifts = {s: 2.0 ** ((others.index(s) - (len(others) - 1) / 2) * 0.05) for s in others}
    for j, strategy in enumerate(strategies):
        rows = efficiency[efficiency["strategy"] == strategy].sort_values("n_labelled")
        x = rows["n_labelled"].to_numpy(float)
        colour = strategy_colour(strategy)
        left.plot(x, rows["mean"], marker="o", ms=4, lw=1.6, color=colour, label=strategy)
        sd = rows["sd"].fillna(0.0)
        left.fill_between(x, rows["mean"] - sd, rows["mean"] + sd, color=colour, alpha=0.12, lw=0)
        if strategy == baseline:
            continue
        shift = shifts[strategy]
        finite = rows["ci_low"].notna()
        right.errorbar(x[finite] * shift, rows["mean_diff"][finite],
                       yerr=[(rows["mean_diff"] - rows["ci_low"])[finite],
                             (rows["ci_high"] - rows["mean_diff"])[finite]],
                       fmt="o", ms=5, capsize=3, color=colour, label=strategy)
        right.plot(x[~finite] * shift, rows["mean_diff"][~finite], "o", ms=5, mfc="none", color=colour)
    right.axhline(0.0, color="black", lw=1)
    cut = _cut_wide_intervals(right, efficiency[efficiency["strategy"] != baseline], shifts)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts)
        ax.set_xticklabels([str(c) for c in counts])
        ax.set_xlabel("labelled volumes")
        ax.grid(alpha=0.3)
    left.set_ylabel("mean foreground Dice (test)")
    right.set_ylabel(f"difference to {baseline} (paired)")
    left.set_title("Dice; band = sd over seeds", fontsize=10)
    right.set_title(f"paired difference; bars = {level:.0%} t-interval" + (" (▲▼: cut)" if cut else ""),
                    fontsize=10)
    handles, labels = left.get_legend_handles_labels()  # every initialisation, the baseline included
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=10, frameon=False)
    lo, hi = int(efficiency["n_seeds"].min()), int(efficiency["n_seeds"].max())
    seeds = f"{lo}" if lo == hi else f"{lo}-{hi}"
    note = f"{seeds} seed{'s' if hi > 1 else ''} per point"
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=11)
    return fig


def _cut_wide_intervals(ax, rows: pd.DataFrame, shifts: dict[str, float], max_ratio: float = 2.0) -> bool:
    """Keep the narrow intervals readable: when the widest interval is more than ``max_ratio`` times as long as
    the median one, the y axis is cut at ``max_ratio`` times the median half-range beyond the means, and each cut
    end is marked with a triangle at the edge (the full interval is in the table beside the figure). ``shifts``:
    each strategy's x offset factor, as its bars are drawn. Returns whether anything was cut."""
    rows = rows.dropna(subset=["ci_low", "ci_high"])
    if rows.empty:
        return False
    half = (rows["ci_high"] - rows["ci_low"]) / 2
    limit = max_ratio * float(half.median())
    if float(half.max()) <= limit or limit <= 0:
        return False
    lo = min(float(rows["mean_diff"].min()) - limit, -limit)
    hi = max(float(rows["mean_diff"].max()) + limit, limit)
    ax.set_ylim(lo, hi)
    for row in rows.itertuples():
        colour = strategy_colour(row.strategy)
        x = row.n_labelled * shifts.get(row.strategy, 1.0)
        if row.ci_low < lo:
            ax.plot([x], [lo], marker="v", ms=7, color=colour, clip_on=False)
        if row.ci_high > hi:
            ax.plot([x], [hi], marker="^", ms=7, color=colour, clip_on=False)
    return True


def paired_explorer(table: pd.DataFrame, baseline: str = "random", level: float = 0.95):
    """Widget: choose the baseline initialisation and the interval's confidence level; shows the paired table and
    :func:`plot_paired`. ``table`` is the grid's tidy CSV. The first frame is drawn at once."""
    import ipywidgets as widgets
    from IPython.display import display

    from glcl_core.analysis import results
    from glcl_core.viz.browse import show_in

    strategies = strategy_order(table["strategy"])
    if len(strategies) < 2:
        raise ValueError("the paired explorer needs at least two initialisations")
    chooser = widgets.Dropdown(options=strategies, value=baseline if baseline in strategies else strategies[0],
                               description="baseline", layout=widgets.Layout(width="220px"))
    confidence = widgets.SelectionSlider(options=[0.8, 0.9, 0.95, 0.99], value=level if level in (0.8, 0.9, 0.95, 0.99)
                                         else 0.95, description="level", continuous_update=False)
    text, output = widgets.Output(), widgets.Output()

    def render(*_) -> None:
        paired = results.paired_comparison(table, baseline=chooser.value, level=confidence.value)
        with text:
            text.clear_output(wait=True)
            display(results.format_paired(paired, level=confidence.value))
        show_in(output, plot_paired(paired, results.paired_differences(table, chooser.value), baseline=chooser.value,
                                    level=confidence.value))

    chooser.observe(render, names="value")
    confidence.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HBox([chooser, confidence]), text, output])


def plot_validation_curves(summary: pd.DataFrame, fig: Figure | None = None, title: str | None = None) -> Figure:
    """Validation Dice against fine-tuning step, one panel per number of labelled volumes, one line per
    initialisation (mean over seeds, band = sd).

    Args:
        summary: :func:`glcl_core.analysis.results.curve_summary` (strategy, n_labelled, step, mean, sd, n_seeds).
    """
    if summary.empty:
        raise ValueError("empty summary: nothing to plot")
    counts = sorted(summary["n_labelled"].unique())
    if fig is None:
        fig = Figure(figsize=(3.6 * len(counts) + 1.8, 3.2), layout="constrained")
    else:
        fig.clear()
    axes = np.atleast_1d(fig.subplots(1, len(counts), sharey=True, squeeze=False)[0])
    for ax, n in zip(axes, counts):
        part = summary[summary["n_labelled"] == n]
        for strategy in strategy_order(part["strategy"]):
            rows = part[part["strategy"] == strategy].sort_values("step")
            colour = strategy_colour(strategy)
            ax.plot(rows["step"], rows["mean"], marker=".", lw=1.5, color=colour, label=strategy)
            ax.fill_between(rows["step"], rows["mean"] - rows["sd"].fillna(0.0), rows["mean"] + rows["sd"].fillna(0.0),
                            color=colour, alpha=0.12, lw=0)
        ax.set_title(f"n = {n} labelled")
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean foreground Dice (validation)")
    # one legend for all panels: a strategy may be missing from the last one
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[-1].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                    frameon=False, title="init")
    lo, hi = int(summary["n_seeds"].min()), int(summary["n_seeds"].max())
    note = (f"mean over {lo}" + (f"-{hi}" if hi != lo else "") + f" seed{'s' if hi > 1 else ''}"
            + (", band = sd" if hi > 1 else ""))
    fig.suptitle(f"{title}\n{note}" if title else f"Validation Dice during fine-tuning; {note}", fontsize=10)
    return fig
