"""glcl_core.analysis.study: the study's summary tables read back and compared across presets."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from glcl_core.analysis import results, study


def _efficiency(preset, rows):
    return pd.DataFrame([{"embedded": preset, "strategy": s, "n_labelled": n, "mean": 0.5, "sd": 0.1, "n_seeds": 3,
                          "mean_diff": d, "ci_low": lo, "ci_high": hi, "n_pairs": 3 if d == d else None,
                          "wins": w} for s, n, d, lo, hi, w in rows])


@pytest.fixture
def written(tmp_path):
    nan = float("nan")
    pd.concat([
        _efficiency("multicontrast", [("random", 1, nan, nan, nan, None), ("GD+LR", 1, 0.007, -0.022, 0.037, 2),
                                      ("GD+LR", 2, 0.006, -0.021, 0.033, 2), ("GR", 1, 0.003, -0.035, 0.041, 2)]),
        _efficiency("standard", [("random", 1, nan, nan, nan, None), ("GD+LR", 1, -0.01, -0.05, 0.03, 1)]),
    ]).to_csv(tmp_path / "label_efficiency_cpu.csv", index=False)
    _efficiency("multicontrast", [("random", 1, nan, nan, nan, None), ("GD+LR", 1, 0.027, -0.010, 0.064, 3)]).to_csv(
        tmp_path / "frozen_probe_cpu.csv", index=False)
    pd.DataFrame([{"embedded": "multicontrast", "strategy": s, "n_labelled": 1, "step": step, "mean": m, "sd": 0.1,
                   "n_seeds": 3} for s, step, m in [("random", 50, 0.328), ("GD+LR", 50, 0.351), ("GD+LR", 100, 0.9)]]
                 ).to_csv(tmp_path / "head_start_cpu.csv", index=False)
    pd.DataFrame([{"embedded": "standard", "n_low": 1, "n_high": 12, "final_low": 0.7, "final_high": 0.74,
                   "headroom_final": 0.04}]).to_csv(tmp_path / "label_headroom_grid_cpu.csv", index=False)
    return tmp_path


def test_overview_one_row_per_preset_and_initialisation_with_empty_cells_where_nothing_ran(written):
    tables = study.load_study(written, "cpu")
    assert set(tables) == {"efficiency", "probe", "head_start", "headroom"}
    assert study.presets_of(tables) == ["standard", "multicontrast"]  # the fixed order, not the files' order
    table = study.overview(tables)
    assert list(table["preset"]) == ["standard", "multicontrast", "multicontrast"]
    assert list(table["strategy"]) == ["GD+LR", "GR", "GD+LR"]  # book order within a preset; no baseline row
    standard = table.iloc[0]
    assert standard["headroom"] == "0.040" and standard["fine-tuned n=1"] == "-0.010 [-0.050, +0.030] 1/3"
    assert standard["fine-tuned n=2"] == "" and standard["probe n=1"] == "" and standard["head start (step 50)"] == ""
    gd_lr = table.iloc[2]
    assert gd_lr["headroom"] == "" and gd_lr["probe n=1"] == "+0.027 [-0.010, +0.064] 3/3"
    assert gd_lr["head start (step 50)"] == "+0.023"  # 0.351 - 0.328 at step 50, not the step-100 row
    assert list(study.overview(tables, strategies=["GR"])["strategy"]) == ["GR"]


def test_a_missing_table_is_left_out(written):
    (written / "frozen_probe_cpu.csv").unlink()
    tables = study.load_study(written, "cpu")
    assert "probe" not in tables
    assert (study.overview(tables)["probe n=1"] == "").all()
    assert study.load_study(written / "nowhere", "cpu") == {}
    assert study.overview({}).empty


def test_study_figure_one_panel_per_preset_filled_where_the_interval_excludes_zero(written):
    from glcl_core.viz.study import plot_study

    tables = study.load_study(written, "cpu")
    tables["efficiency"].loc[tables["efficiency"]["strategy"] == "GR", ["ci_low", "ci_high"]] = [0.001, 0.01]
    fig = plot_study(tables)
    axes = fig.axes
    assert [ax.get_title().split("\n")[0] for ax in axes] == ["standard", "multicontrast"]
    assert "label headroom 0.040" in axes[0].get_title() and "headroom" not in axes[1].get_title()
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["GR", "GD+LR"]
    markers = [line for line in axes[1].lines if line.get_marker() not in ("None", None, "")]
    filled = {line.get_markerfacecolor() != "white" for line in markers}
    assert filled == {True, False}  # GR's interval excludes 0, the others' do not
    # the multicontrast panel: GR n=1, GD+LR n=1 and 2 fine-tuned, GD+LR probe
    assert len(markers) == 4
    with pytest.raises(ValueError, match="no label-efficiency table"):
        plot_study({"probe": tables["probe"]})


def test_study_edge_cases_give_empty_cells_or_a_clear_error(written):
    from glcl_core.viz.study import plot_study

    tables = study.load_study(written, "cpu")
    tables["headroom"].loc[:, "headroom_final"] = float("nan")  # e.g. a preset whose 12-volume runs failed
    assert (study.overview(tables)["headroom"] == "").all()
    tables["headroom"] = pd.concat([tables["headroom"], tables["headroom"].assign(embedded="varied")])
    fig = plot_study(tables)  # a preset with a headroom row only gets no panel
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["standard", "multicontrast"]
    with pytest.raises(ValueError, match="no label-efficiency table"):
        plot_study({**tables, "efficiency": tables["efficiency"].iloc[:0]})


# ------------------------------------------------------------------------------ the committed results of the book
RESULTS = Path(__file__).resolve().parents[1] / "results"
SHOWN = {table: sorted(pd.read_csv(RESULTS / table)["embedded"].unique())
         for table in ("label_efficiency_cpu.csv", "frozen_probe_cpu.csv")}


@pytest.mark.parametrize("table, preset", [(t, p) for t, presets in SHOWN.items() for p in presets])
def test_committed_summaries_match_the_committed_grids(table, preset):
    """Chapter 6 reads the summary tables; each preset's rows must be what ``evidence_grid.py --summary`` makes of
    the grid folder committed beside them (a grid extended without summarising again fails here)."""
    cells = RESULTS / "grids" / f"cpu-{preset}" / ("finetune" if table.startswith("label") else "probe") / "results.csv"
    assert cells.is_file(), f"{table} shows {preset}, but its grid {cells} is not committed"
    expected = results.label_efficiency(results.load_results(cells)).reset_index(drop=True)
    committed = pd.read_csv(RESULTS / table)
    committed = committed[committed["embedded"] == preset].drop(columns="embedded").reset_index(drop=True)
    pd.testing.assert_frame_equal(committed[expected.columns], expected, check_dtype=False, rtol=1e-5,
                                  obj=f"{table} ({preset}) against {cells}")


def _budget_rows():
    rows = []
    for init, steps, dice in [("random", 0, 0.5), ("GD", 300, 0.6), ("GD", 1000, 0.7), ("GR", 300, 0.55)]:
        for seed, shift in [(0, 0.0), (1, 0.02)]:
            for step in (50, 100, 150, 200):  # the probe's last evaluation is step 200
                rows.append({"embedded": "standard", "init": init, "global_steps": steps, "local_steps": 0,
                             "measure": "probe", "seed": seed, "step": step, "pretrain_seconds": 10.0 * steps,
                             "val_dice": dice + shift if step == 200 else 0.0})
            for step in (50, 100, 300):
                rows.append({"embedded": "standard", "init": init, "global_steps": steps, "local_steps": 0,
                             "measure": "finetune", "seed": seed, "step": step, "pretrain_seconds": 10.0 * steps,
                             "val_dice": dice + step / 1000})
    return pd.DataFrame(rows)


def test_budget_table_takes_the_probes_last_step_and_the_chosen_fine_tuning_steps_in_book_order():
    table = study.budget_table(_budget_rows(), "standard", finetune_steps=(50, 300, 400))
    assert list(zip(table["init"], table["global_steps"])) == [("random", 0), ("GR", 300), ("GD", 300), ("GD", 1000)]
    gd = table[(table["init"] == "GD") & (table["global_steps"] == 1000)].iloc[0]
    assert gd["probe"] == pytest.approx(0.71)  # mean of 0.70 and 0.72 at step 200, not of all probe steps
    assert gd["fine-tuned step 50"] == pytest.approx(0.75)
    assert gd["fine-tuned step 300"] == pytest.approx(1.0)
    assert table["fine-tuned step 400"].isna().all()  # never evaluated
    assert gd["pretrain_seconds"] == 10000.0
    with pytest.raises(ValueError, match="'varied'.*holds: standard"):
        study.budget_table(_budget_rows(), "varied")


def test_budget_figure_one_panel_per_measure_one_line_per_initialisation():
    from glcl_core.viz.study import plot_budget

    table = study.budget_table(_budget_rows(), "standard")
    fig = plot_budget(table)
    assert [ax.get_title() for ax in fig.axes] == ["frozen probe (last step)", "fine-tuned, step 50",
                                                   "fine-tuned, step 100", "fine-tuned, step 300"]
    probe = fig.axes[0]
    lines = {line.get_label(): line for line in probe.get_lines()}
    assert list(lines["GD"].get_xdata()) == [300, 1000] and list(lines["GD"].get_ydata()) == pytest.approx([0.61, 0.71])
    assert list(lines["random"].get_ydata()) == pytest.approx([0.51, 0.51])  # the dashed reference
    with pytest.raises(ValueError, match="no pre-trained row"):
        plot_budget(table[table["init"] == "random"])


def test_committed_budget_sweep_measures_every_budget_it_ran_with_both_measures():
    budget = study.load_budget(RESULTS)
    assert budget is not None, "results/pretraining_budget_cpu.csv is missing"
    for embedded in budget["embedded"].unique():
        table = study.budget_table(budget, embedded)
        assert (table["global_steps"] == 0).sum() == 1, f"{embedded}: one random-init reference"
        complete = table[["probe", "fine-tuned step 50", "fine-tuned step 100", "fine-tuned step 300"]].notna()
        assert complete.all(axis=None), f"{embedded}: a budget without both measures:\n{table}"
