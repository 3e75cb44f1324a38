"""glcl_core.analysis.results on hand-made tables with known answers; the figures and the summary script on a
small CSV."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from glcl_core.analysis import results

ROOT = Path(__file__).resolve().parents[1]


def _table(cells: dict[tuple[str, int, int], list[list[float]]]) -> pd.DataFrame:
    """cells: (strategy, n, seed) -> per test volume, the Dice of classes 1..K."""
    rows = []
    for (strategy, n, seed), volumes in cells.items():
        for v, scores in enumerate(volumes):
            for k, d in enumerate(scores, start=1):
                rows.append({"method": "x", "strategy": strategy, "n_labelled": n, "seed": seed,
                             "volume": f"vol{v}", "class": f"c{k}", "dice": d})
    return pd.DataFrame(rows)


@pytest.fixture
def grid() -> pd.DataFrame:
    # seed means: random n1 -> 0.5, 0.6, 0.7 ; GD n1 -> 0.6, 0.8, 0.7 (differences 0.1, 0.2, 0.0)
    #             random n2 -> 0.8 (one seed) ; GD n2 -> 0.9, 0.7 (seed 1 has no random partner)
    return _table({
        ("GD", 1, 0): [[0.5, 0.7], [0.6, 0.6]],
        ("GD", 1, 1): [[0.8, 0.8], [0.9, 0.7]],
        ("GD", 1, 2): [[0.7, 0.7], [0.7, 0.7]],
        ("random", 1, 0): [[0.4, 0.6], [0.5, 0.5]],
        ("random", 1, 1): [[0.6, 0.6], [0.6, 0.6]],
        ("random", 1, 2): [[0.9, 0.5], [0.7, 0.7]],
        ("random", 2, 0): [[0.8, 0.8], [0.8, 0.8]],
        ("GD", 2, 0): [[0.9, 0.9], [0.9, 0.9]],
        ("GD", 2, 1): [[0.7, 0.7], [0.7, 0.7]],
    })


def test_order_matches_experiment_initialisations():
    from glcl_core.experiment import INITIALISATIONS

    assert tuple(INITIALISATIONS) == results.ORDER
    assert results.strategy_order(["zz", "GD+LR", "random", "GD"]) == ["random", "GD", "GD+LR", "zz"]


def test_summary_averages_volumes_and_classes_per_seed_then_seeds(grid):
    s = results.summary_table(grid)
    assert list(s["strategy"]) == ["random", "random", "GD", "GD"]  # random first, then by n_labelled
    row = s[(s.strategy == "GD") & (s.n_labelled == 1)].iloc[0]
    assert row["mean"] == pytest.approx(0.7)
    assert row["sd"] == pytest.approx(np.std([0.6, 0.8, 0.7], ddof=1))
    assert row["n_seeds"] == 3
    single = s[(s.strategy == "random") & (s.n_labelled == 2)].iloc[0]
    assert single["mean"] == pytest.approx(0.8) and np.isnan(single["sd"]) and single["n_seeds"] == 1


def test_seed_is_the_unit_not_the_volume():
    # unequal numbers of volumes per seed: the seed means are averaged with equal weight
    df = _table({("GD", 1, 0): [[1.0], [1.0], [1.0]], ("GD", 1, 1): [[0.0]]})
    assert results.summary_table(df)["mean"].iloc[0] == pytest.approx(0.5)


def test_nan_dice_is_left_out():
    df = _table({("GD", 1, 0): [[0.6, np.nan]]})
    assert results.summary_table(df)["mean"].iloc[0] == pytest.approx(0.6)


def test_paired_comparison_known_answer(grid):
    p = results.paired_comparison(grid, baseline="random")
    assert set(p["strategy"]) == {"GD"}
    one = p[p.n_labelled == 1].iloc[0]
    d = np.array([0.1, 0.2, 0.0])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert one["mean_diff"] == pytest.approx(0.1)
    assert one["ci_low"] == pytest.approx(0.1 - half) and one["ci_high"] == pytest.approx(0.1 + half)
    assert one["n_pairs"] == 3 and one["wins"] == 2
    assert one["baseline"] == pytest.approx(0.6)
    two = p[p.n_labelled == 2].iloc[0]  # only seed 0 has a partner
    assert two["n_pairs"] == 1 and two["mean_diff"] == pytest.approx(0.1) and np.isnan(two["ci_low"])


def test_pairing_uses_matched_seeds_not_means(grid):
    # the paired interval is narrower than the two-sample one here because seed effects cancel
    diffs = results.paired_differences(grid)
    n1 = diffs[diffs.n_labelled == 1].sort_values("seed")
    assert list(n1["seed"]) == [0, 1, 2]
    assert n1["difference"].to_numpy() == pytest.approx([0.1, 0.2, 0.0])


def test_paired_comparison_unknown_baseline(grid):
    with pytest.raises(ValueError, match="baseline 'GR'"):
        results.paired_comparison(grid, baseline="GR")


def test_mean_ci_edge_cases():
    assert np.isnan(results.mean_ci([])[0])
    mean, low, high = results.mean_ci([0.3])
    assert mean == 0.3 and np.isnan(low) and np.isnan(high)
    mean, low, high = results.mean_ci([1.0, 1.0, 1.0])
    assert (mean, low, high) == (1.0, 1.0, 1.0)
    wide = results.mean_ci([0.0, 1.0], level=0.95)
    assert wide[2] - wide[1] == pytest.approx(2 * stats.t.ppf(0.975, 1) * np.std([0, 1], ddof=1) / np.sqrt(2))


def test_per_class_table(grid):
    t = results.per_class_table(grid)
    row = t[(t.strategy == "GD") & (t.n_labelled == 1) & (t["class"] == "c1")].iloc[0]
    # per seed, mean over the two volumes of class c1: 0.55, 0.85, 0.7
    assert row["mean"] == pytest.approx(np.mean([0.55, 0.85, 0.7]))
    assert row["sd"] == pytest.approx(np.std([0.55, 0.85, 0.7], ddof=1))
    assert list(t[(t.strategy == "GD") & (t.n_labelled == 1)]["class"]) == ["c1", "c2"]


def test_format_and_markdown(grid):
    wide = results.format_summary(results.summary_table(grid))
    assert list(wide.columns) == ["strategy", "n=1", "n=2"]
    assert wide.iloc[1]["n=1"] == f"0.700 ± {np.std([0.6, 0.8, 0.7], ddof=1):.3f} (3)"
    assert wide.iloc[0]["n=2"] == "0.800 (1)"
    md = results.to_markdown(wide)
    assert md.splitlines()[0] == "| strategy | n=1 | n=2 |" and md.count("\n") == 4
    paired = results.format_paired(results.paired_comparison(grid))
    assert paired.iloc[0]["wins / pairs"] == "2/3" and "[n/a]" in paired.iloc[1]["difference [95% CI]"]


def test_load_results_checks_columns(tmp_path, grid):
    good = tmp_path / "r.csv"
    grid.to_csv(good, index=False)
    assert len(results.load_results(good)) == len(grid)
    bad = tmp_path / "bad.csv"
    grid.drop(columns=["seed"]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="seed"):
        results.load_results(bad)
    with pytest.raises(FileNotFoundError):
        results.load_results(tmp_path / "missing.csv")


def test_figures_draw(grid):
    from glcl_core.data.volume import Volume
    from glcl_core.viz import segmentation as seg

    fig = seg.plot_dice(results.summary_table(grid))
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) >= 2
    assert len(seg.plot_dice(results.per_class_table(grid)).axes) == 2
    fig = seg.plot_paired(results.paired_comparison(grid), results.paired_differences(grid))
    assert len(fig.axes[0].get_yticklabels()) == 2

    label = np.zeros((3, 8, 8), np.int64)
    label[:, 2:6, 2:6] = 1
    label[:, 3:5, 3:5] = 2
    vol = Volume("v", np.random.default_rng(0).random((3, 8, 8)).astype(np.float32), label, (2.0, 1.0, 1.0))
    perfect, empty = label.copy(), np.zeros_like(label)
    assert seg.volume_dice(perfect, label, 3) == 1.0 and seg.volume_dice(empty, label, 3) == 0.0
    assert np.isnan(seg.slice_dice(empty[0], empty[0], 3))
    fig = seg.plot_overlays(vol, {"perfect": perfect, "empty": empty}, [0, 2], show_errors=True)
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="shape"):
        seg.plot_overlays(vol, {"bad": empty[:2]}, [0])


def test_summarize_script(tmp_path, grid):
    csv = tmp_path / "grid.csv"
    grid.to_csv(csv, index=False)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize_results.py"), str(csv), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| strategy | n=1 | n=2 |" in proc.stdout
    for name in ("summary.md", "summary.csv", "paired.md", "per_class.md", "dice.png", "paired.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "dice.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize_results.py"), str(tmp_path / "no.csv"),
                          "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_load_predictions_and_widgets(tmp_path, monkeypatch, ci_config, ci_split, grid):
    from glcl_core.train.checkpoint import save_checkpoint
    from glcl_core.train.stages import build_model
    from glcl_core.viz import browse
    from glcl_core.viz import segmentation as seg

    frames = []  # outside a kernel an Output widget captures nothing: record the figures instead
    monkeypatch.setattr(browse, "show_in", lambda output, figure: frames.append(figure))

    volumes = ci_split.test[:2]
    for init in ("random", "GD"):
        save_checkpoint(tmp_path / "finetune" / init / "n1_s0" / "final.pt",
                        {"model": build_model(ci_config).state_dict()})
    preds = seg.load_predictions(ci_config, tmp_path, volumes, ["random", "GD"], n_labelled=1, seed=0)
    assert set(preds) == {v.name for v in volumes}
    for v in volumes:
        assert set(preds[v.name]) == {"random", "GD"}
        assert preds[v.name]["GD"].shape == v.image.shape and preds[v.name]["GD"].max() < ci_config.model.n_classes
    with pytest.raises(FileNotFoundError, match="n2_s0"):
        seg.load_predictions(ci_config, tmp_path, volumes, ["random"], n_labelled=2, seed=0)

    browser = seg.overlay_browser(volumes, preds, n_rows=2, n_classes=4)
    controls, _ = browser.children
    assert len(frames) == 1 and len(frames[0].axes) == 2 * 3  # drawn at once: 2 slices x (reference + 2 inits)
    controls.children[0].value = 1  # switch volume: the slider follows the new volume's length, one redraw
    assert controls.children[1].max == volumes[1].n_slices - 1 and len(frames) == 2
    assert volumes[1].name in frames[1]._suptitle.get_text()

    frames.clear()
    explorer = seg.paired_explorer(grid)
    assert len(frames) == 1 and "random" in frames[0].axes[0].get_xlabel()
    explorer.children[0].children[0].value = "GD"  # GD as baseline: random is compared against it
    assert "to GD" in frames[1].axes[0].get_xlabel()
    assert [t.get_text().split(",")[0] for t in frames[1].axes[0].get_yticklabels()] == ["random", "random"]


def _write_history(folder: Path, steps: list[int], val: list[float | None]) -> None:
    folder.mkdir(parents=True)
    rows = [{"step": s, "loss": 1.0, "images_per_s": 10.0, "val_dice": v} for s, v in zip(steps, val)]
    pd.DataFrame(rows).to_csv(folder / "history.csv", index=False)


def test_validation_curves_read_histories_and_average_over_seeds(tmp_path):
    grid_dir = tmp_path / "grid"
    _write_history(grid_dir / "finetune" / "random" / "n1_s0", [10, 20, 30, 40], [None, 0.2, None, 0.4])
    _write_history(grid_dir / "finetune" / "random" / "n1_s1", [10, 20, 30, 40], [None, 0.4, None, 0.6])
    _write_history(grid_dir / "finetune" / "GD+LR" / "n2_s0", [20, 40], [0.5, 0.7])
    curves = results.validation_curves(grid_dir)
    assert len(curves) == 6 and set(curves.columns) == {"strategy", "n_labelled", "seed", "step", "val_dice"}
    summary = results.curve_summary(curves)
    assert summary["strategy"].tolist() == ["random", "random", "GD+LR", "GD+LR"]  # book order, then by step
    first = summary.iloc[0]
    assert (first["n_labelled"], first["step"], first["n_seeds"]) == (1, 20, 2)
    assert first["mean"] == pytest.approx(0.3) and first["sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert np.isnan(summary.iloc[2]["sd"])

    from glcl_core.viz.segmentation import plot_validation_curves

    fig = plot_validation_curves(summary)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 1 and len(fig.axes[1].lines) == 1
    # one legend names every strategy, though each panel holds only one of them
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["random", "GD+LR"]
    with pytest.raises(FileNotFoundError, match="no fine-tuning histories"):
        results.validation_curves(tmp_path / "empty")


def test_by_labelled_group_splits_test_volumes_by_the_labelled_volumes_group():
    # vol0 and vol1 are group "a", vol2 group "b"; seed 0 labels an "a" volume, seed 1 a "b" volume
    table = _table({
        ("random", 1, 0): [[0.8, 0.6], [0.6, 0.4], [0.1, 0.0]],
        ("random", 1, 1): [[0.2, 0.0], [0.0, 0.2], [0.9, 0.7]],
    })
    groups = {"vol0": "a", "vol1": "a", "vol2": "b", "pool0": "a", "pool1": "b"}
    out = results.by_labelled_group(table, groups, {(1, 0): ["pool0"], (1, 1): ["pool1"]})
    c1 = out[out["class"] == "c1"].iloc[0]
    # seen: (seed 0, vol0 0.8), (seed 0, vol1 0.6), (seed 1, vol2 0.9); unseen: (seed 0, vol2 0.1), (seed 1: 0.2, 0.0)
    assert c1["seen"] == pytest.approx((0.8 + 0.6 + 0.9) / 3)
    assert c1["unseen"] == pytest.approx((0.1 + 0.2 + 0.0) / 3)
    assert (c1["n_seen"], c1["n_unseen"]) == (3, 3)
    assert list(out["class"]) == ["c1", "c2"]
    # two labelled volumes covering both groups: everything is seen
    both = results.by_labelled_group(table, groups, {(1, 0): ["pool0", "pool1"], (1, 1): ["pool1"]})
    assert both.loc[both["class"] == "c1", "n_seen"].item() == 4


def test_by_labelled_group_names_what_is_missing():
    table = _table({("random", 1, 0): [[0.5]]})
    with pytest.raises(KeyError, match="vol0"):
        results.by_labelled_group(table, {}, {(1, 0): []})
    with pytest.raises(KeyError, match=r"\(1, 0\)"):
        results.by_labelled_group(table, {"vol0": "a"}, {})


def test_label_headroom_takes_last_and_best_evaluation_per_run_then_averages_draws():
    rows = []
    for n, seed, dice in [(1, 0, [0.5, 0.3]), (1, 1, [0.2, 0.4]), (12, 0, [0.6, 0.8]), (4, 0, [0.9, 0.9])]:
        rows += [{"n_labelled": n, "seed": seed, "step": step, "val_dice": d} for step, d in zip((100, 50), dice)]
    curves = pd.DataFrame(rows)  # steps out of order on purpose: "final" is the last step, not the last row
    row = results.label_headroom(curves, low=1, high=12)
    assert row["final_low"] == pytest.approx((0.5 + 0.2) / 2) and row["best_low"] == pytest.approx((0.5 + 0.4) / 2)
    assert row["final_high"] == pytest.approx(0.6) and row["best_high"] == pytest.approx(0.8)
    assert row["headroom_final"] == pytest.approx(0.6 - 0.35) and row["headroom_best"] == pytest.approx(0.8 - 0.45)
    assert (row["draws_low"], row["draws_high"]) == (2, 1)
    assert results.label_headroom(curves)["n_high"] == 12  # the largest count by default
    with pytest.raises(ValueError, match="no validation curve with 2 labelled volumes"):
        results.label_headroom(curves, low=2)
