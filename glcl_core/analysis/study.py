"""The label-efficiency study across embedded presets, read from its summary tables: one overview row per preset and
pre-trained initialisation, to compare presets at a glance. Pure pandas (no torch).

The tables are the ones ``scripts/evidence_grid.py --summary`` writes into ``results/`` (one file per table, one
block of rows per preset, column ``embedded``):

* ``label_efficiency_{profile}.csv``: fine-tuned test Dice and paired differences to random initialisation;
* ``frozen_probe_{profile}.csv``: the same for the frozen-encoder probe;
* ``head_start_{profile}.csv``: validation Dice against fine-tuning step, 1 labelled volume;
* ``label_headroom_grid_{profile}.csv``: the room labels leave (random init, validation, 12 vs 1 labelled volumes).

The pre-training budget sweep (``scripts/pretraining_budget.py``, ``pretraining_budget_{profile}.csv``) is read by
:func:`load_budget` and condensed by :func:`budget_table`: validation Dice against the number of global
pre-training steps.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from glcl_core.analysis.results import strategy_order

TABLES = {"efficiency": "label_efficiency_{profile}.csv", "probe": "frozen_probe_{profile}.csv",
          "head_start": "head_start_{profile}.csv", "headroom": "label_headroom_grid_{profile}.csv"}
PRESET_ORDER = ("standard", "varied", "multicontrast")  # glcl_core.data.presets.PRESETS, without importing torch


def load_study(results_dir: str | Path, profile: str = "cpu") -> dict[str, pd.DataFrame]:
    """The study's summary tables found in ``results_dir`` (keys of :data:`TABLES`); a table not written yet (its
    grid is still running) is left out rather than raising."""
    found = {}
    for key, name in TABLES.items():
        path = Path(results_dir) / name.format(profile=profile)
        if path.is_file():
            found[key] = pd.read_csv(path)
    return found


def presets_of(study: dict[str, pd.DataFrame]) -> list[str]:
    """The presets any table of ``study`` holds, standard / varied / multicontrast first."""
    names = {p for table in study.values() for p in table["embedded"].unique()}
    return [p for p in PRESET_ORDER if p in names] + sorted(names - set(PRESET_ORDER))


def _number(value, digits: int) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def _interval(row, digits: int) -> str:
    if pd.isna(row["mean_diff"]):
        return ""
    bounds = "n/a" if pd.isna(row["ci_low"]) else f"{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}"
    return f"{row['mean_diff']:+.{digits}f} [{bounds}] {int(row['wins'])}/{int(row['n_pairs'])}"


def overview(study: dict[str, pd.DataFrame], n_labelled=(1, 2), probe_labelled=(1,), step: int = 50,
             baseline: str = "random", strategies=None, digits: int = 3) -> pd.DataFrame:
    """One row per (preset, initialisation other than ``baseline``; only ``strategies`` if given), in preset then
    book order:

    * ``headroom``: the preset's label headroom (last evaluation, 12 vs 1 labelled volumes, validation);
    * ``fine-tuned n=k`` for k in ``n_labelled`` and ``probe n=k`` for k in ``probe_labelled``: the mean paired
      difference to ``baseline`` on test volumes, its 95 % interval and wins/pairs, e.g. "+0.007 [-0.022, +0.037] 2/3";
    * ``head start (step s)``: mean validation Dice at fine-tuning step ``step`` (1 labelled volume) minus the
      baseline's at the same step.

    Cells whose grid has not run yet are empty strings; a preset appears as soon as one of its tables exists.
    """
    efficiency, probe = study.get("efficiency"), study.get("probe")
    head, headroom = study.get("head_start"), study.get("headroom")
    rows = []
    for preset in presets_of(study):
        def of(table):
            return None if table is None else table[table["embedded"] == preset]

        eff, prb, hd, room = of(efficiency), of(probe), of(head), of(headroom)
        present = [t["strategy"] for t in (eff, prb, hd) if t is not None and len(t)]
        names = strategy_order(pd.concat(present)) if present else []
        room_text = _number(room["headroom_final"].iloc[0], digits) if room is not None and len(room) else ""
        for strategy in [s for s in names if s != baseline and (strategies is None or s in strategies)]:
            row = {"preset": preset, "headroom": room_text, "strategy": strategy}
            for name, table, counts in (("fine-tuned", eff, n_labelled), ("probe", prb, probe_labelled)):
                for n in counts:
                    match = None if table is None else table[
                        (table["strategy"] == strategy) & (table["n_labelled"] == n)]
                    row[f"{name} n={n}"] = _interval(match.iloc[0], digits) if match is not None and len(match) else ""
            row[f"head start (step {step})"] = _head_start(hd, strategy, baseline, step, digits)
            rows.append(row)
    return pd.DataFrame(rows)


def _head_start(head: pd.DataFrame | None, strategy: str, baseline: str, step: int, digits: int) -> str:
    if head is None:
        return ""
    at = head[(head["step"] == step) & (head["n_labelled"] == 1)].set_index("strategy")["mean"]
    if strategy not in at.index or baseline not in at.index:
        return ""
    return f"{at[strategy] - at[baseline]:+.{digits}f}"


BUDGET_TABLE = "pretraining_budget_{profile}.csv"


def load_budget(results_dir: str | Path, profile: str = "cpu") -> pd.DataFrame | None:
    """The budget sweep's rows (one per initialisation, budget, measure, seed and evaluated step), or None if the
    sweep has not been written in ``results_dir``."""
    path = Path(results_dir) / BUDGET_TABLE.format(profile=profile)
    return pd.read_csv(path) if path.is_file() else None


def budget_table(budget: pd.DataFrame, embedded: str, finetune_steps=(50, 100, 300)) -> pd.DataFrame:
    """Validation Dice against the pre-training budget for one preset, one row per (initialisation, global steps).

    Args:
        budget: :func:`load_budget`'s rows (columns ``embedded, init, global_steps, local_steps, measure, seed,
            step, val_dice, pretrain_seconds``).
        embedded: the preset to show.
        finetune_steps: the fine-tuning steps to report.
    Returns:
        Columns ``init, global_steps, local_steps, pretrain_seconds``, ``probe`` (the frozen-encoder probe's Dice at
        its last evaluation) and ``fine-tuned step s`` for each ``s``; each value is the mean over the seeds
        measured (the sweep uses one). Random initialisation is the row with 0 global steps; rows are in the book's
        initialisation order, then by budget. A step a run never evaluated is NaN.

    Raises:
        ValueError: ``budget`` holds no row of ``embedded``.
    """
    rows = budget[budget["embedded"] == embedded]
    if rows.empty:
        known = ", ".join(sorted(budget["embedded"].unique())) or "none"
        raise ValueError(f"the budget sweep holds no row of preset {embedded!r} (it holds: {known})")
    keys = ["init", "global_steps", "local_steps"]
    probe = rows[rows["measure"] == "probe"]
    last = probe[probe["step"] == probe.groupby(keys + ["seed"])["step"].transform("max")]
    table = last.groupby(keys)["val_dice"].mean().rename("probe").to_frame()
    table = rows.groupby(keys)["pretrain_seconds"].max().to_frame().join(table)
    tuned = rows[rows["measure"] == "finetune"]
    for step in finetune_steps:
        at = tuned[tuned["step"] == step].groupby(keys)["val_dice"].mean()
        table[f"fine-tuned step {step}"] = at
    table = table.reset_index()
    order = {name: i for i, name in enumerate(strategy_order(table["init"]))}
    return (table.sort_values(["init", "global_steps"], key=lambda c: c.map(order) if c.name == "init" else c)
            .reset_index(drop=True))
