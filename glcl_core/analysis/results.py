"""Summaries of a low-label grid's CSV: mean +- sd over seeds, paired differences against a baseline with a
t-based confidence interval, and per-class tables. Pure pandas / numpy / scipy (no torch).

The unit of replication is the **seed**: a seed fixes which volumes are labelled (``draw_labelled`` depends only on
the seed), the weight initialisation of the segmentation head and the augmentation stream. Test volumes and classes
within one seed are averaged first; they are repeated measurements of one fine-tuned model, not independent runs.
Two initialisations with the same (n_labelled, seed) were fine-tuned on the *same* labelled volumes, so they are
compared pairwise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = ["method", "strategy", "n_labelled", "seed", "volume", "class", "dice"]
# the book's order of initialisations (glcl_core.experiment.INITIALISATIONS; kept here so this module needs no torch)
ORDER = ("random", "GR", "GD-", "GD", "PCL", "GD+LR", "GD+LD", "PCL+LR")
_KEYS = ["strategy", "n_labelled", "seed"]


# ------------------------------------------------------------------------------------------------------- loading
def load_results(csv: str | Path) -> pd.DataFrame:
    """The grid's tidy CSV (``run_experiment``'s ``results.csv``), checked and typed.

    Raises:
        FileNotFoundError: no such file. ValueError: a required column is missing or the file holds no rows.
    """
    path = Path(csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file")
    df = pd.read_csv(path)
    return check_results(df, source=str(path))


def check_results(df: pd.DataFrame, source: str = "table") -> pd.DataFrame:
    """Validate a results table (the CSV's columns; ``method`` is optional) and fix the dtypes."""
    needed = [c for c in COLUMNS if c != "method"]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    if df.empty:
        raise ValueError(f"{source}: no rows")
    df = df.copy()
    df["strategy"] = df["strategy"].astype(str)
    df["n_labelled"] = df["n_labelled"].astype(int)
    df["seed"] = df["seed"].astype(int)
    df["class"] = df["class"].astype(str)
    df["volume"] = df["volume"].astype(str)
    df["dice"] = pd.to_numeric(df["dice"], errors="coerce")
    return df


def strategy_order(strategies) -> list[str]:
    """Initialisations in the book's order (random first, then GR, GD-, GD, PCL, combinations); others after."""
    known = list(ORDER)
    present = list(dict.fromkeys(str(s) for s in strategies))
    return [s for s in known if s in present] + sorted(s for s in present if s not in known)


def _ordered(table: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    order = {s: i for i, s in enumerate(strategy_order(table["strategy"]))}
    keys = ["_order", "n_labelled"] + (extra or [])
    return (table.assign(_order=table["strategy"].map(order)).sort_values(keys).drop(columns="_order")
            .reset_index(drop=True))


# ------------------------------------------------------------------------------------------------------ summaries
def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (strategy, n_labelled, seed): mean foreground Dice over test volumes and classes.

    NaN Dice (a class absent from both prediction and reference) is left out of the mean.
    """
    df = check_results(df)
    per_seed = df.groupby(_KEYS, as_index=False)["dice"].mean()
    return _ordered(per_seed, ["seed"])


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean +- sd over seeds of the per-seed mean foreground Dice, per initialisation and n_labelled.

    Columns: strategy, n_labelled, mean, sd (ddof 1; NaN with a single seed), n_seeds.
    """
    per_seed = seed_means(df)
    out = (per_seed.groupby(["strategy", "n_labelled"])["dice"]
           .agg(mean="mean", sd=lambda x: x.std(ddof=1) if x.count() > 1 else np.nan, n_seeds="count")
           .reset_index())
    out["n_seeds"] = out["n_seeds"].astype(int)
    return _ordered(out)


def per_class_table(df: pd.DataFrame) -> pd.DataFrame:
    """Like :func:`summary_table`, per class: per seed the mean over test volumes, then mean +- sd over seeds.

    Columns: strategy, n_labelled, class, mean, sd, n_seeds.
    """
    df = check_results(df)
    per_seed = df.groupby(_KEYS + ["class"], as_index=False)["dice"].mean()
    out = (per_seed.groupby(["strategy", "n_labelled", "class"])["dice"]
           .agg(mean="mean", sd=lambda x: x.std(ddof=1) if x.count() > 1 else np.nan, n_seeds="count")
           .reset_index())
    out["n_seeds"] = out["n_seeds"].astype(int)
    classes = list(dict.fromkeys(df["class"]))  # the CSV's own class order (1, 2, 3 ...)
    out["_class"] = out["class"].map({c: i for i, c in enumerate(classes)})
    return _ordered(out, ["_class"]).drop(columns="_class")


def by_labelled_group(df: pd.DataFrame, groups: dict[str, str], draws: dict[tuple[int, int], list[str]]
                      ) -> pd.DataFrame:
    """Dice on test volumes of a group the labelled volumes showed ("seen") or did not show ("unseen").

    With one labelled volume of one contrast, a model may segment test volumes of that contrast well and the others
    badly; the mean over all test volumes hides this. ``groups``: volume name -> group (e.g. the embedded
    generator's ``contrast_family``); ``draws``: (n_labelled, seed) -> names of the labelled volumes of that cell.

    Columns: strategy, n_labelled, class, seen, unseen (mean Dice over (seed, test volume) pairs, pooled over
    seeds), n_seen, n_unseen (how many such pairs).
    """
    df = check_results(df)
    missing = sorted(set(df["volume"]) - set(groups))
    if missing:
        raise KeyError(f"no group for test volume(s) {', '.join(missing)}")
    cells = set(map(tuple, df[["n_labelled", "seed"]].drop_duplicates().to_numpy().tolist()))
    undrawn = sorted(c for c in cells if c not in draws)
    if undrawn:
        raise KeyError(f"no labelled volumes given for (n_labelled, seed) {undrawn}")
    shown = {cell: {groups[name] for name in names} for cell, names in draws.items()}
    seen = [groups[v] in shown[(n, s)] for v, n, s in zip(df["volume"], df["n_labelled"], df["seed"])]
    df = df.assign(match=np.where(seen, "seen", "unseen"))
    out = df.pivot_table(index=["strategy", "n_labelled", "class"], columns="match", values="dice",
                         aggfunc=["mean", "count"])
    table = pd.DataFrame(index=out.index)
    for match in ("seen", "unseen"):
        table[match] = out["mean"][match] if ("mean", match) in out.columns else np.nan
    for match in ("seen", "unseen"):
        table[f"n_{match}"] = (out["count"][match].fillna(0).astype(int)
                               if ("count", match) in out.columns else 0)
    table = table.reset_index()
    classes = list(dict.fromkeys(df["class"]))
    table["_class"] = table["class"].map({c: i for i, c in enumerate(classes)})
    return _ordered(table, ["_class"]).drop(columns="_class")


# ------------------------------------------------------------------------------------------- paired comparison
def paired_differences(df: pd.DataFrame, baseline: str = "random") -> pd.DataFrame:
    """Per (strategy, n_labelled, seed): the strategy's seed mean minus the baseline's seed mean for the same
    (n_labelled, seed). Cells without a matching baseline cell are dropped.

    Columns: strategy, n_labelled, seed, dice, baseline_dice, difference.
    """
    per_seed = seed_means(df)
    if baseline not in set(per_seed["strategy"]):
        raise ValueError(f"baseline {baseline!r} is not in the results (strategies: "
                         f"{', '.join(strategy_order(per_seed['strategy']))})")
    base = (per_seed[per_seed["strategy"] == baseline].drop(columns="strategy")
            .rename(columns={"dice": "baseline_dice"}))
    others = per_seed[per_seed["strategy"] != baseline]
    pairs = others.merge(base, on=["n_labelled", "seed"], how="inner")
    pairs["difference"] = pairs["dice"] - pairs["baseline_dice"]
    pairs = pairs.dropna(subset=["difference"])
    return _ordered(pairs, ["seed"])


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-based confidence interval ``(mean, low, high)`` of a sample; NaN bounds for fewer than 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(x.mean())
    if x.size < 2:
        return (mean, np.nan, np.nan)
    half = float(stats.t.ppf(0.5 + level / 2, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return (mean, mean - half, mean + half)


def paired_comparison(df: pd.DataFrame, baseline: str = "random", level: float = 0.95) -> pd.DataFrame:
    """Mean paired difference to ``baseline`` per (strategy, n_labelled), over matched seeds, with a t-based CI.

    For n pairs with differences d_1..d_n: mean d, sd s, interval d +- t_{n-1, (1+level)/2} s / sqrt(n).
    With one pair the interval is undefined (NaN). Columns: strategy, n_labelled, mean_diff, ci_low, ci_high,
    n_pairs, wins (pairs with a positive difference), baseline (its mean Dice over the same seeds).
    """
    pairs = paired_differences(df, baseline)
    rows = []
    for (strategy, n), group in pairs.groupby(["strategy", "n_labelled"], sort=False):
        mean, low, high = mean_ci(group["difference"], level)
        rows.append({"strategy": strategy, "n_labelled": int(n), "mean_diff": mean, "ci_low": low, "ci_high": high,
                     "n_pairs": int(len(group)), "wins": int((group["difference"] > 0).sum()),
                     "baseline": float(group["baseline_dice"].mean())})
    columns = ["strategy", "n_labelled", "mean_diff", "ci_low", "ci_high", "n_pairs", "wins", "baseline"]
    out = pd.DataFrame(rows, columns=columns)
    return _ordered(out) if len(out) else out


def label_efficiency(df: pd.DataFrame, baseline: str = "random", level: float = 0.95) -> pd.DataFrame:
    """:func:`summary_table` beside :func:`paired_comparison` with ``baseline``: per (strategy, n_labelled) the
    mean +- sd over seeds and the mean paired difference to the baseline with its interval (NaN for the baseline
    itself). Columns: strategy, n_labelled, mean, sd, n_seeds, mean_diff, ci_low, ci_high, n_pairs, wins."""
    summary = summary_table(df)
    paired = paired_comparison(df, baseline, level).drop(columns="baseline")
    return _ordered(summary.merge(paired, on=["strategy", "n_labelled"], how="left"))


# ----------------------------------------------------------------------------------------------- presentation
def format_summary(summary: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Wide table for reading: one row per initialisation, one column per n_labelled, cells "mean ± sd (n)"."""
    def cell(r) -> str:
        sd = "" if pd.isna(r["sd"]) else f" ± {r['sd']:.{digits}f}"
        return f"{r['mean']:.{digits}f}{sd} ({int(r['n_seeds'])})"

    keyed = summary.assign(cell=summary.apply(cell, axis=1))
    index = [c for c in ("strategy", "class") if c in summary.columns]
    wide = keyed.pivot(index=index, columns="n_labelled", values="cell")
    wide.columns = [f"n={c}" for c in wide.columns]
    order = {s: i for i, s in enumerate(strategy_order(summary["strategy"]))}
    wide = wide.reset_index()
    wide["_o"] = wide["strategy"].map(order)
    if "class" in wide.columns:
        classes = list(dict.fromkeys(summary["class"]))
        wide["_c"] = wide["class"].map({c: i for i, c in enumerate(classes)})
        wide = wide.sort_values(["_o", "_c"]).drop(columns=["_o", "_c"])
    else:
        wide = wide.sort_values("_o").drop(columns="_o")
    return wide.fillna("").reset_index(drop=True)


def format_paired(paired: pd.DataFrame, digits: int = 3, level: float = 0.95) -> pd.DataFrame:
    """Paired comparison for reading: "difference [low, high]" and "wins/pairs" (``level``: for the header)."""
    def interval(r) -> str:
        if pd.isna(r["ci_low"]):
            return f"{r['mean_diff']:+.{digits}f} [n/a]"
        return f"{r['mean_diff']:+.{digits}f} [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]"

    return pd.DataFrame({
        "strategy": paired["strategy"],
        "n_labelled": paired["n_labelled"],
        "baseline Dice": paired["baseline"].map(lambda v: f"{v:.{digits}f}"),
        f"difference [{level:.0%} CI]": paired.apply(interval, axis=1) if len(paired) else [],
        "wins / pairs": [f"{w}/{n}" for w, n in zip(paired["wins"], paired["n_pairs"])],
    })


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no extra dependency); numbers as they are formatted by str()."""
    header = [str(c) for c in table.columns]
    rows = [[_md_cell(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _md_cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.3f}"
    return str(value).replace("|", "\\|")


# ------------------------------------------------------------------------------------------- validation curves
def validation_curves(grid_dir: str | Path) -> pd.DataFrame:
    """The validation Dice of every fine-tuning run of a grid folder, step by step.

    Reads ``finetune/<init>/n<n>_s<seed>/history.csv`` under ``grid_dir`` (written by ``run_experiment``).
    Returns columns strategy, n_labelled, seed, step, val_dice (rows only where validation ran). Validation
    volumes only: this is the diagnostic that may guide choices (test volumes never are).

    Raises:
        FileNotFoundError: ``grid_dir`` holds no fine-tuning histories.
    """
    root = Path(grid_dir) / "finetune"
    frames = []
    for history in sorted(root.glob("*/n*_s*/history.csv")):
        init = history.parent.parent.name
        n_text, seed_text = history.parent.name[1:].split("_s")
        h = pd.read_csv(history)
        if "val_dice" not in h.columns:
            continue
        h = h.dropna(subset=["val_dice"])
        frames.append(pd.DataFrame({"strategy": init, "n_labelled": int(n_text), "seed": int(seed_text),
                                    "step": h["step"].astype(int), "val_dice": h["val_dice"].astype(float)}))
    if not frames:
        raise FileNotFoundError(f"{root}: no fine-tuning histories (finetune/<init>/n<n>_s<seed>/history.csv)")
    return pd.concat(frames, ignore_index=True)


def curve_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds of the validation Dice per (strategy, n_labelled, step), with the seed count."""
    grouped = curves.groupby(["strategy", "n_labelled", "step"])["val_dice"]
    out = grouped.agg(mean="mean", sd="std", n_seeds="count").reset_index()
    return _ordered(out, extra=["step"])


def label_headroom(curves: pd.DataFrame, low: int = 1, high: int | None = None) -> dict:
    """What ``high`` labelled volumes give over ``low`` on validation volumes: the label headroom of one preset.

    ``curves``: one preset's validation curves of one initialisation (columns n_labelled, seed, step, val_dice;
    e.g. the random-init rows of :func:`validation_curves`). Per run, the Dice at its last evaluation (``final``) and
    its best evaluation (``best``) are taken, then averaged over seeds. ``high`` defaults to the largest count.
    Pre-training can only win what the labels leave open, so a small headroom caps any pre-training effect.

    Returns a dict: n_low, n_high, final_low, final_high, headroom_final, best_low, best_high, headroom_best,
    draws_low, draws_high (runs averaged).

    Raises:
        ValueError: ``curves`` holds no run with ``low`` or with ``high`` labelled volumes.
    """
    high = int(curves["n_labelled"].max()) if high is None else high
    runs = curves.sort_values("step").groupby(["n_labelled", "seed"])["val_dice"].agg(final="last", best="max")
    row: dict = {"n_low": low, "n_high": high}
    for side, n in (("low", low), ("high", high)):
        if n not in runs.index.get_level_values("n_labelled"):
            raise ValueError(f"no validation curve with {n} labelled volumes (have "
                             f"{sorted(set(runs.index.get_level_values('n_labelled')))})")
        at_n = runs.xs(n, level="n_labelled")
        row[f"final_{side}"], row[f"best_{side}"] = at_n["final"].mean(), at_n["best"].mean()
        row[f"draws_{side}"] = len(at_n)
    row["headroom_final"] = row["final_high"] - row["final_low"]
    row["headroom_best"] = row["best_high"] - row["best_low"]
    order = ["n_low", "n_high", "final_low", "final_high", "headroom_final", "best_low", "best_high",
             "headroom_best", "draws_low", "draws_high"]
    return {key: row[key] for key in order}
