"""The label-efficiency pipeline end to end in the ci profile: pre-train the shipped initialisations, export them,
run the test-set grids from the exported weights, summarise."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import evidence_grid  # noqa: E402
import pretrain_shipped  # noqa: E402

from glcl_core import checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    runs, folder = root / "runs", root / "export"
    common = ["--profile", "ci", "--embedded", "standard", "--runs", str(runs)]
    pretrain_shipped.main(common + ["--inits", "GD"])
    assert (runs / "pretrain" / "GD" / "final.pt").is_file()
    wall = json.loads((runs / "pretrain" / "GD" / "wall.json").read_text())
    assert wall["seconds"] > 0 and wall["estimated"] is False
    pretrain_shipped.main(common + ["--inits", "GD", "GD+LR", "--export", "--folder", str(folder)])
    return root, folder


def test_export_writes_finished_runs_only_and_once(exported, capsys):
    root, folder = exported
    manifest = checkpoints.read_manifest(folder)
    assert list(manifest) == ["GD"]  # GD+LR was never pre-trained: named, not exported
    entry = manifest["GD"]
    assert entry["config"]["global_"]["iterations"] == 4
    assert entry["command"] == "python scripts/pretrain_shipped.py --profile ci --embedded standard --inits GD"
    assert entry["wall_seconds_estimated"] is False
    health = pd.read_csv(folder / "GD_history.csv")  # the stage's health log travels with its weights
    assert int(health["step"].iloc[-1]) == 4 and "loss_over_chance" in health.columns
    before = (folder / "manifest.json").read_text()
    pretrain_shipped.main(["--profile", "ci", "--embedded", "standard", "--runs", str(root / "runs"),
                           "--inits", "GD", "--export", "--folder", str(folder)])
    assert "already exported" in capsys.readouterr().out
    assert (folder / "manifest.json").read_text() == before


def test_an_exported_run_is_not_pretrained_again_after_its_run_folder_is_gone(exported, tmp_path, capsys):
    _, folder = exported
    fresh = tmp_path / "fresh-runs"  # a new checkout: the run folder is gone, the exported file is committed
    pretrain_shipped.main(["--profile", "ci", "--embedded", "standard", "--runs", str(fresh), "--inits", "GD",
                           "--folder", str(folder)])
    assert "GD: already exported" in capsys.readouterr().out
    assert not (fresh / "pretrain" / "GD").exists()


def test_grids_use_the_exported_weights_and_summarise(exported, tmp_path):
    _, folder = exported
    out, results_dir = tmp_path / "grid", tmp_path / "results"
    args = ["--profile", "ci", "--embedded", "standard", "--folder", str(folder), "--out", str(out),
            "--inits", "random", "GD", "GD+LR", "--seeds", "0", "1", "--steps", "0", "1"]
    evidence_grid.main(args)
    spec = json.loads((out / "finetune" / "experiment.json").read_text())
    assert spec["pretrained_sha256"] == {"GD": checkpoints.read_manifest(folder)["GD"]["sha256"]}
    assert json.loads((out / "probe" / "experiment.json").read_text())["config"]["finetune"]["freeze"] is True
    rows = len(pd.read_csv(out / "finetune" / "results.csv"))
    status = evidence_grid.plan_status("ci", "standard", out, folder, only=["random", "GD", "GD+LR"], seeds=[0, 1])
    first = status[status["entry"] == 0].set_index("init")
    assert first.loc["random", "finished"] == first.loc["GD", "finished"] == first.loc["GD", "planned"] == 4
    assert first.loc["GD+LR", "finished"] == 0 and not first.loc["GD+LR", "weights"] and first.loc["GD", "weights"]
    assert status[status["entry"] == 1].set_index("init").loc["GD", "finished"] == 2  # the probe at 1, seeds 0 1
    assert status[status["entry"] == 5]["finished"].sum() == 0
    evidence_grid.main(args)  # finished cells are skipped
    assert len(pd.read_csv(out / "finetune" / "results.csv")) == rows
    # the grid folder holds text only (it is committed), and a copy of it resumes elsewhere without recomputing
    assert not list(out.rglob("*.pt")) and list(out.glob("finetune/finetune/*/n1_s0/history.csv"))
    import shutil
    moved = tmp_path / "other-checkout"
    shutil.copytree(out, moved)
    evidence_grid.main([*args[:7], str(moved), *args[8:]])
    assert pd.read_csv(moved / "finetune" / "results.csv").equals(pd.read_csv(out / "finetune" / "results.csv"))
    assert not list(moved.rglob("*.pt"))

    # a cell still running (a partial history, no row in results.csv) is left out of the curves
    running = out / "finetune" / "finetune" / "random" / "n1_s7"
    running.mkdir()
    (running / "history.csv").write_text("step,loss,images_per_s,val_dice\n1,1.0,10,0.01\n")
    written = evidence_grid.write_summary(out, "standard", results_dir, profile="ci")
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    efficiency = pd.read_csv(results_dir / "label_efficiency_ci.csv")
    assert set(efficiency["strategy"]) == {"random", "GD"} and set(efficiency["n_labelled"]) == {1, 2}
    gd = efficiency[efficiency["strategy"] == "GD"]
    assert (gd["n_pairs"] == 2).all() and (gd["ci_low"] <= gd["mean_diff"]).all()
    probe = pd.read_csv(results_dir / "frozen_probe_ci.csv")
    assert set(probe["strategy"]) == {"random", "GD"} and set(probe["n_labelled"]) == {1}
    head = pd.read_csv(results_dir / "head_start_ci.csv")
    assert set(head["n_labelled"]) == {1} and (head["n_seeds"] == 2).all()
    # a summary of the same grid again replaces its own rows; another grid kept under that name stops it
    evidence_grid.write_summary(out, "standard", results_dir, profile="ci")
    spec_path, rows_path = results_dir / "low_label_ci_standard.json", results_dir / "low_label_ci_standard.csv"
    other = json.loads(spec_path.read_text())
    other["config"]["global_"]["iterations"] += 1
    spec_path.write_text(json.dumps(other))
    rows_path.write_text("the other grid's rows\n")
    with pytest.raises(SystemExit, match=r"low_label_ci_standard\.csv holds another grid.*global_\.iterations"):
        evidence_grid.write_summary(out, "standard", results_dir, profile="ci")
    assert rows_path.read_text() == "the other grid's rows\n"
    # a second preset's rows are added beside the first's, not over them
    evidence_grid._replace_preset_rows(results_dir / "label_efficiency_ci.csv", "varied",
                                       efficiency.drop(columns="embedded"))
    both = pd.read_csv(results_dir / "label_efficiency_ci.csv")
    assert both.groupby("embedded").size().to_dict() == {"standard": len(efficiency), "varied": len(efficiency)}


def test_label_efficiency_figure_shows_every_initialisation():
    from glcl_core.analysis import results
    from glcl_core.viz import segmentation as seg

    rows = [{"method": "m", "strategy": s, "n_labelled": n, "seed": seed, "volume": "v", "class": "c",
             "dice": 0.5 + 0.1 * (s == "GD") + 0.02 * seed + 0.01 * n}
            for s in ("random", "GD") for n in (1, 2, 4) for seed in (0, 1, 2)]
    efficiency = results.label_efficiency(pd.DataFrame(rows))
    gd = efficiency[efficiency["strategy"] == "GD"]
    assert gd["mean_diff"].round(6).tolist() == [0.1, 0.1, 0.1] and (gd["n_pairs"] == 3).all()
    fig = seg.plot_label_efficiency(efficiency, title="t")
    left, right = fig.axes[:2]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["random", "GD"]  # one legend, below both panels
    assert "3 seeds" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="empty"):
        seg.plot_label_efficiency(efficiency.iloc[:0])


def test_budget_measures_the_shipped_weights_without_pretraining(exported, tmp_path):
    """pretraining_budget.py --shipped measures the long budget from the exported checkpoint: no global stage is
    run, and the pre-training time recorded is the manifest's."""
    import pretraining_budget

    _, folder = exported
    entry = checkpoints.read_manifest(folder)["GD"]
    steps = entry["config"]["global_"]["iterations"]
    out, runs = tmp_path / "budget.csv", tmp_path / "runs"
    args = ["--profile", "ci", "--embedded", "standard", "--inits", "GD", "--budgets", str(steps), "--probe-steps",
            "2", "--shipped", "--folder", str(folder), "--out", str(out), "--runs", str(runs)]
    pretraining_budget.main(args)
    rows = pd.read_csv(out)
    assert set(rows["measure"]) == {"probe", "finetune"} and (rows["global_steps"] == steps).all()
    assert rows["pretrain_seconds"].round(1).eq(round(entry["wall_seconds"], 1)).all()
    assert not (runs / "standard" / "global").exists()  # nothing was pre-trained
    pretraining_budget.main(args)  # finished cells are skipped
    assert len(pd.read_csv(out)) == len(rows)


def test_local_stage_starts_from_the_shipped_global_stage(exported, tmp_path, capsys):
    """--from-shipped: a fresh runs folder takes G^D from the exported checkpoint and runs only the local stage."""
    import torch

    from glcl_core.train.checkpoint import load_checkpoint

    _, folder = exported
    runs = tmp_path / "runs"
    pretrain_shipped.main(["--profile", "ci", "--embedded", "standard", "--runs", str(runs), "--inits", "GD+LR",
                           "--from-shipped", "--folder", str(folder)])
    assert "global stage taken from the shipped" in capsys.readouterr().out
    shipped = load_checkpoint(folder / checkpoints.read_manifest(folder)["GD"]["file"])["model"]
    local = load_checkpoint(runs / "pretrain" / "GD+LR" / "final.pt")["model"]
    encoder = [k for k in shipped if k.startswith("encoder.")]
    assert encoder and all(torch.equal(local[k], shipped[k]) for k in encoder)  # frozen, and the same weights
    wall = json.loads((runs / "pretrain" / "GD" / "wall.json").read_text())
    assert wall["seconds"] == checkpoints.read_manifest(folder)["GD"]["wall_seconds"]
    # a damaged shipped file is refused, and nothing is pre-trained from it
    damaged, runs2 = tmp_path / "damaged", tmp_path / "runs2"
    import shutil
    shutil.copytree(folder, damaged)
    path = damaged / checkpoints.read_manifest(damaged)["GD"]["file"]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    assert not pretrain_shipped.seed_from_shipped(pretrain_shipped.shipped_config("ci", "standard"), runs2, "GD",
                                                  damaged)
    assert "does not match the manifest" in capsys.readouterr().out and not (runs2 / "pretrain" / "GD").exists()


def test_label_efficiency_figure_cuts_one_wide_interval_to_keep_the_others_readable():
    from glcl_core.analysis import results
    from glcl_core.viz import segmentation as seg

    # GD's paired differences are tight at n = 1, 2 and 4, and spread widely at n = 8 (seed 2 far off)
    rows = [{"method": "m", "strategy": s, "n_labelled": n, "seed": seed, "volume": "v", "class": "c",
             "dice": 0.5 + (s == "GD") * (0.02 + 0.005 * seed + (n == 8) * (0.5 if seed == 2 else -0.2))}
            for s in ("random", "GD") for n in (1, 2, 4, 8) for seed in (0, 1, 2)]
    efficiency = results.label_efficiency(pd.DataFrame(rows))
    fig = seg.plot_label_efficiency(efficiency, title="t")
    right = fig.axes[1]
    wide = efficiency[(efficiency["strategy"] == "GD") & (efficiency["n_labelled"] == 8)].iloc[0]
    low, high = right.get_ylim()
    assert low > wide["ci_low"] and high < wide["ci_high"]  # the wide interval is cut ...
    assert "cut" in right.get_title()
    narrow = efficiency[(efficiency["strategy"] == "GD") & (efficiency["n_labelled"] == 1)].iloc[0]
    assert low < narrow["ci_low"] and narrow["ci_high"] < high  # ... the narrow ones are whole


def test_each_preset_has_its_checkpoint_folder_and_the_budget_sweep_reads_it(monkeypatch, tmp_path):
    import pretraining_budget

    assert pretrain_shipped.default_folder("cpu", checkpoints.SHIPPED_EMBEDDED) == checkpoints.DEFAULT_FOLDER
    assert pretrain_shipped.default_folder("cpu", "standard") == Path("results/pretrained/standard")
    assert pretrain_shipped.default_folder("gpu", "standard") == Path("runs/shipped-gpu/standard/export")
    seen = []

    class Stop(Exception):
        pass

    def record(profile, embedded, inits, folder=None):
        seen.append(folder)
        raise Stop

    monkeypatch.setattr(pretraining_budget, "shipped_snapshots", record)
    with pytest.raises(Stop):
        pretraining_budget.main(["--profile", "ci", "--embedded", "standard", "--inits", "GD", "--shipped",
                                 "--out", str(tmp_path / "b.csv"), "--runs", str(tmp_path / "runs")])
    assert seen == [Path("runs/shipped-ci/standard/export")]


def test_budget_summary_prints_each_presets_table_and_saves_its_figure(tmp_path, capsys):
    import pretraining_budget

    rows = [{"embedded": preset, "init": init, "global_steps": steps, "local_steps": 0, "measure": measure,
             "n_labelled": 1, "seed": 0, "step": step, "val_dice": 0.5 + steps / 10000, "pretrain_seconds": steps,
             "measure_seconds": 1.0, "threads": 1, "machine": "x"}
            for preset in ("standard", "varied") for init, steps in (("random", 0), ("GD", 300))
            for measure, steps_run in (("probe", (50, 200)), ("finetune", (50, 100, 300))) for step in steps_run]
    csv = tmp_path / "budget.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    pretraining_budget.main(["--summary", "--out", str(csv), "--figures", str(tmp_path / "figs")])
    printed = capsys.readouterr().out
    assert "varied (validation, one labelled volume, labelled draws [0])" in printed and "0.53" in printed
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["pretraining_budget_cpu_standard.png",
                                                                     "pretraining_budget_cpu_varied.png"]
    with pytest.raises(SystemExit, match="missing.csv: no budget sweep"):
        pretraining_budget.main(["--summary", "--out", str(tmp_path / "missing.csv")])


def test_a_resumed_runs_wall_time_is_flagged_as_estimated_and_the_command_stays_pasteable(exported, tmp_path):
    """A run interrupted and resumed has its wall time scaled up from its last session: the manifest says so in its
    own field, so the command can still be pasted as it is."""
    import shutil

    root, _ = exported
    runs, folder = tmp_path / "runs", tmp_path / "export"
    shutil.copytree(root / "runs", runs)
    wall_file = runs / "pretrain" / "GD" / "wall.json"
    wall = json.loads(wall_file.read_text())
    wall_file.write_text(json.dumps({"seconds": wall["seconds"], "estimated": True}) + "\n")
    pretrain_shipped.main(["--profile", "ci", "--embedded", "standard", "--runs", str(runs), "--inits", "GD",
                           "--export", "--folder", str(folder)])
    entry = checkpoints.read_manifest(folder)["GD"]
    assert entry["wall_seconds_estimated"] is True and entry["wall_seconds"] == wall["seconds"]
    assert entry["command"].endswith("--inits GD")
