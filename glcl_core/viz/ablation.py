"""Figures of the local-stage ablation (Chapter 4): validation Dice and how far the local loss fell per setting,
and the local loss during pre-training relative to each setting's chance level.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter


# ------------------------------------------------------------------------------------------------- ablation
def plot_ablation(table, baseline: str = "no local stage", default: str = "default",
                  fig: Figure | None = None) -> Figure:
    """Left: validation Dice per setting (the run without a local stage as a dashed line); with a ``val_dice_sd``
    column (several seeds) the bars are means with ±1 sd error bars, labelled "mean ± sd". Right: how far the
    local loss fell, ``loss_end / chance`` (1 = features no better than chance, lower = more discriminative).

    ``table``: :attr:`glcl_core.analysis.ablation.Ablation.table`.
    """
    t = table.reset_index(drop=True)
    names = list(t["setting"])
    ypos = np.arange(len(t))[::-1]
    colours = ["0.6" if n == baseline else ("#1f77b4" if n == default else "#ff7f0e") for n in names]
    fig = fig or plt.figure(figsize=(10, 0.42 * len(t) + 1.6))
    ax_dice, ax_loss = fig.subplots(1, 2, sharey=True)
    mean = t["val_dice"].to_numpy(dtype=float)
    sd = t["val_dice_sd"].to_numpy(dtype=float) if "val_dice_sd" in t else np.full(len(t), np.nan)
    has_sd = np.isfinite(sd)
    ax_dice.barh(ypos, mean, color=colours)
    if has_sd.any():
        ax_dice.errorbar(mean[has_sd], ypos[has_sd], xerr=sd[has_sd], fmt="none", ecolor="k", elinewidth=1,
                         capsize=3)
    for yy, v, e, ok in zip(ypos, mean, sd, has_sd):
        ax_dice.text(v + (e if ok else 0.0), yy, f" {v:.3f} ± {e:.3f}" if ok else f" {v:.3f}", va="center",
                     fontsize=9)
    if baseline in names:
        ax_dice.axvline(float(mean[names.index(baseline)]), color="0.4", linestyle="--", linewidth=1)
    ax_dice.set_yticks(ypos, names)
    n_seeds = int(np.nanmax(t["n_seeds"])) if "n_seeds" in t and has_sd.any() else 1
    ax_dice.set_xlabel("validation Dice (mean of foreground classes)"
                       + (f"\nmean ± sd over {n_seeds} seeds" if n_seeds > 1 else ""))
    right = np.where(has_sd, mean + np.nan_to_num(sd), mean)
    ax_dice.set_xlim(0, max(0.05, float(np.nanmax(right))) * (1.45 if has_sd.any() else 1.2))
    ratio = (t["loss_end"] / t["chance"]).to_numpy(dtype=float)
    start = (t["loss_start"] / t["chance"]).to_numpy(dtype=float)
    ok = np.isfinite(ratio) & np.isfinite(start) & (ratio > 0)
    for yy, r0, r1, colour in zip(ypos[ok], start[ok], ratio[ok], np.asarray(colours, dtype=object)[ok]):
        ax_loss.plot([r0, r1], [yy, yy], color=colour, linewidth=2)
        ax_loss.plot([r1], [yy], "o", color=colour, markersize=7)
        ax_loss.plot([r0], [yy], "|", color="k", markersize=12)
    for yy in ypos[~ok]:
        ax_loss.text(1.0, yy, "no local loss  ", ha="right", va="center", fontsize=8, color="0.4")
    ax_loss.axvline(1.0, color="0.4", linestyle="--", linewidth=1)
    ax_loss.set_xscale("log")
    low = float(np.nanmin(ratio[ok])) if ok.any() else 0.1
    ax_loss.set_xlim(min(low, 0.5) / 2, 2.0)
    ax_loss.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_loss.set_xlabel("local loss / chance level log(1 + negatives)\n| first fifth of steps, o last fifth")
    fig.tight_layout()
    return fig


def plot_local_curves(local: Mapping[str, Any], table, fig: Figure | None = None) -> Figure:
    """Local loss during pre-training, divided by each setting's chance level ``log(1 + negatives)``.

    ``local``: :attr:`~glcl_core.analysis.ablation.Ablation.local` (``{setting: StageResult}``); ``table``: the
    ablation table (for the chance levels). 1 = no better than features that carry no information.
    """
    chance = dict(zip(table["setting"], table["chance"]))
    fig = fig or plt.figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    for i, (name, result) in enumerate(local.items()):
        hist = result.history
        if hist is None or len(hist) == 0 or not np.isfinite(chance.get(name, np.nan)):
            continue
        ax.plot(hist["step"], hist["loss"] / chance[name], label=name, color=f"C{i}",
                linewidth=2.2 if name == "default" else 1.2)
    ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("local pre-training step")
    ax.set_ylabel("loss / chance level")
    ax.legend(fontsize=9, frameon=False, ncol=2)
    fig.tight_layout()
    return fig
