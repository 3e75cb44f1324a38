"""One figure for the label-efficiency study across presets: each pre-trained initialisation's paired difference to
random initialisation (mean and 95 % interval over seeds), fine-tuned and probed, one panel per preset.

Reads the tables of :func:`glcl_core.analysis.study.load_study`. Figures are :class:`matplotlib.figure.Figure`
objects (no pyplot state), like the rest of :mod:`glcl_core.viz`.
"""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from glcl_core.analysis.results import strategy_order
from glcl_core.analysis.study import presets_of
from glcl_core.viz.segmentation import strategy_colour

# (table key, labelled volumes, marker, label): what each row of a panel shows
VIEWS = (("efficiency", 1, "o", "fine-tuned, 1 labelled"), ("efficiency", 2, "s", "fine-tuned, 2 labelled"),
         ("probe", 1, "D", "frozen probe, 1 labelled"))


def plot_study(study: dict[str, pd.DataFrame], strategies=None, baseline: str = "random", views=VIEWS,
               title: str | None = None, fig: Figure | None = None) -> Figure:
    """Paired differences to ``baseline`` per preset (columns of panels) and initialisation (rows within a panel).

    Args:
        study: :func:`glcl_core.analysis.study.load_study` (at least ``"efficiency"``; ``"probe"`` and
            ``"headroom"`` are used when present).
        strategies: the initialisations to show (default: every one but the baseline, in the book's order).
        views: (table key, labelled volumes, marker, legend label) per interval drawn for each initialisation.
    Returns:
        The Figure: in each panel a line at 0 and, for every initialisation, one interval per view (filled marker:
        the interval excludes 0; open: it does not). The panel title names the preset and its label headroom.

    Raises:
        ValueError: ``study`` holds no label-efficiency table.
    """
    if "efficiency" not in study or study["efficiency"].empty:
        raise ValueError("the study has no label-efficiency table (label_efficiency_<profile>.csv): nothing to plot")
    presets = presets_of({"efficiency": study["efficiency"]})  # a panel per preset with fine-tuning results
    names = strategy_order(pd.concat([t["strategy"] for t in study.values() if "strategy" in t.columns]))
    shown = [s for s in names if s != baseline and (strategies is None or s in strategies)]
    if fig is None:
        fig = Figure(figsize=(max(8.0, 3.0 * len(presets) + 1.5), 0.45 * len(shown) * len(views) + 1.8), dpi=100,
                     layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(1, len(presets), sharex=True, sharey=True, squeeze=False)[0]
    step = 1.0 / (len(views) + 1)
    for ax, preset in zip(axes, presets):
        for row, strategy in enumerate(shown):
            for k, (key, n, marker, label) in enumerate(views):
                table = study.get(key)
                if table is None:
                    continue
                match = table[(table["embedded"] == preset) & (table["strategy"] == strategy)
                              & (table["n_labelled"] == n)]
                if match.empty or pd.isna(match["mean_diff"].iloc[0]):
                    continue
                r = match.iloc[0]
                y = row + (k + 1) * step - 0.5
                colour = strategy_colour(strategy)
                excludes = pd.notna(r["ci_low"]) and (r["ci_low"] > 0 or r["ci_high"] < 0)
                if pd.notna(r["ci_low"]):
                    ax.plot([r["ci_low"], r["ci_high"]], [y, y], color=colour, lw=1.6)
                ax.plot([r["mean_diff"]], [y], marker=marker, ms=6, color=colour,
                        mfc=colour if excludes else "white", mew=1.4, ls="none")
        ax.axvline(0.0, color="black", lw=1)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"difference to {baseline} (test Dice)")
        room = study.get("headroom")
        room = None if room is None else room[room["embedded"] == preset]
        known = room is not None and len(room) and pd.notna(room["headroom_final"].iloc[0])
        suffix = f"\nlabel headroom {room['headroom_final'].iloc[0]:.3f}" if known else ""
        ax.set_title(f"{preset}{suffix}", fontsize=10)
    axes[0].set_yticks(range(len(shown)))
    axes[0].set_yticklabels(shown)
    axes[0].set_ylim(len(shown) - 0.5, -0.5)
    handles = [axes[0].plot([], [], marker=m, ls="none", color="black", mfc="white", label=label)[0]
               for _, _, m, label in views]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(views), fontsize=9, frameon=False)
    note = "bars: 95 % interval over seeds (paired); filled marker: the interval excludes 0"
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=10)
    return fig


def plot_budget(table: pd.DataFrame, title: str | None = None, fig: Figure | None = None) -> Figure:
    """Validation Dice against the pre-training budget: one panel per column of ``table`` that holds Dice (the
    frozen probe, then fine-tuning at each reported step; two panels a row), one line per pre-trained
    initialisation over its global steps (log axis), random initialisation as a dashed grey line.

    Args:
        table: :func:`glcl_core.analysis.study.budget_table` of one preset.
    Raises:
        ValueError: ``table`` holds no pre-trained row (nothing to draw against the budget).
    """
    columns = [c for c in table.columns if c == "probe" or c.startswith("fine-tuned step")]
    trained = table[table["global_steps"] > 0]
    if trained.empty:
        raise ValueError("the budget table holds no pre-trained row (global_steps > 0): nothing to plot")
    reference = table[table["global_steps"] == 0]
    n_cols = min(2, len(columns))  # two panels a row: readable in a book's text column
    n_rows = -(-len(columns) // n_cols)
    if fig is None:
        fig = Figure(figsize=(3.6 * n_cols + 1.2, 2.9 * n_rows + 0.4), dpi=100, layout="constrained")
    else:
        fig.clear()
    grid = fig.subplots(n_rows, n_cols, sharey=True, squeeze=False)
    for ax in grid.flat[len(columns):]:
        ax.remove()
    axes = grid.flat[:len(columns)]
    budgets = sorted(trained["global_steps"].unique())
    for ax, column in zip(axes, columns):
        for init, rows in trained.groupby("init", sort=False):
            rows = rows.dropna(subset=[column])
            ax.plot(rows["global_steps"], rows[column], marker="o", color=strategy_colour(init), label=init)
        if len(reference) and pd.notna(reference[column].iloc[0]):
            ax.axhline(reference[column].iloc[0], color=strategy_colour("random"), ls="--", label="random")
        ax.set_xscale("log")
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.set_xlabel("global pre-training steps")
        ax.set_title("frozen probe (last step)" if column == "probe" else column.replace("fine-tuned", "fine-tuned,"),
                     fontsize=10)
    for ax in grid[:, 0]:
        ax.set_ylabel("validation Dice")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
