"""The command line and the low-label grid: help, one-line errors, resumable grid, tidy CSV."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from glcl_core import experiment
from glcl_core.cli import main
from glcl_core.cli.parser import EMBEDDED_PRESETS, INIT_CHOICES
from glcl_core.data.presets import PRESETS
from glcl_core.train import finetuning
from glcl_core.train.config import make_config


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, GLCL_PROFILE="ci")
    return subprocess.run([sys.executable, "-m", "glcl_core", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_choices_match_library():
    assert tuple(experiment.INITIALISATIONS) == INIT_CHOICES
    assert tuple(PRESETS) == EMBEDDED_PRESETS


def test_cli_preset_parses():
    from glcl_core.cli.checks import _config
    from glcl_core.cli.parser import PRESET_CHOICES, build_parser
    from glcl_core.train.config import PRESETS

    assert PRESET_CHOICES == tuple(PRESETS)
    parser = build_parser()
    args = parser.parse_args(["pretrain", "--preset", "pcl", "--profile", "cpu"])
    assert args.preset == "pcl" and args.strategy is None
    g = _config(args).global_
    assert (g.strategy, g.optimizer, g.schedule, g.head, g.head_dim, g.batch_size) == (
        "PCL", "sgd", "cosine", "pooled", 512, 32)
    args = parser.parse_args(["experiment", "--preset", "pcl", "--profile", "ci", "--inits", "GD"])
    assert args.preset == "pcl" and _config(args).global_.optimizer == "sgd"
    # without a preset: GLCL's defaults; an explicit --strategy (an override, as _cmd_pretrain passes it) wins
    plain = parser.parse_args(["pretrain", "--profile", "cpu"])
    assert plain.preset is None and _config(plain).global_.optimizer == "adam"
    gd = parser.parse_args(["pretrain", "--preset", "pcl", "--strategy", "GD", "--profile", "ci"])
    assert _config(gd, global_={"strategy": gd.strategy}).global_.strategy == "GD"
    with pytest.raises(SystemExit):
        parser.parse_args(["pretrain", "--preset", "simclr"])

def test_cli_budget_parses():
    from glcl_core.cli.checks import _config
    from glcl_core.cli.parser import BUDGET_CHOICES, build_parser
    from glcl_core.train.config import BUDGETS, make_config

    assert BUDGET_CHOICES == tuple(BUDGETS)
    parser = build_parser()
    for command in ("pretrain", "experiment"):
        long = _config(parser.parse_args([command, "--profile", "cpu", "--budget", "long"]))
        short = _config(parser.parse_args([command, "--profile", "cpu"]))
        assert (long.global_.iterations, long.local.iterations) == (3000, 2000)
        assert (short.global_.iterations, short.local.iterations) == (300, 200)
        # the budget changes the pre-training length only
        assert long.finetune == short.finetune and long.data == short.data
    assert make_config("gpu", budget="long").global_.iterations == make_config("gpu").global_.iterations == 10000
    with pytest.raises(ValueError, match="unknown budget"):
        make_config("cpu", budget="short")
    with pytest.raises(SystemExit):
        parser.parse_args(["experiment", "--budget", "short"])


@pytest.mark.parametrize("command", ["pretrain", "finetune", "evaluate", "experiment"])
def test_cli_help(command):
    proc = _cli(command, "--help")
    assert proc.returncode == 0
    for flag in ("--data", "--profile", "--out", "--seed"):
        assert flag in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "--data", "/no/such/folder"], "/no/such/folder: no such file or folder"),
        (["finetune", "--init", "/no/such.pt"], "/no/such.pt: no such file or folder"),
        (["evaluate", "--checkpoint", "/no/such.pt"], "/no/such.pt: no such file or folder"),
        (["pretrain", "--strategy", "XX"], "invalid choice"),
        (["finetune", "--n-labelled", "0"], "must be >= 1"),
        (["pretrain", "--profile", "tpu"], "invalid choice"),
    ],
)
def test_cli_errors_are_one_line(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_empty_data_folder(tmp_path, capsys):
    assert main(["pretrain", "--profile", "ci", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and err.count("\n") == 1


def test_cli_pretrain_finetune_evaluate(tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["pretrain", "--profile", "ci", "--strategy", "GD", "--local", "LR", "--out", str(out)]) == 0
    assert (out / "global" / "final.pt").exists() and (out / "local" / "final.pt").exists()
    # an existing run is refused, not overwritten
    assert main(["pretrain", "--profile", "ci", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    ft = tmp_path / "ft"
    assert main(["finetune", "--profile", "ci", "--init", str(out / "local" / "final.pt"), "--n-labelled", "1",
                 "--out", str(ft)]) == 0
    metrics = pd.read_csv(ft / "metrics.csv")
    assert set(metrics.columns) == {"volume", "class", "dice", "resolution"} and metrics["dice"].between(0, 1).all()
    assert set(metrics["resolution"]) == {"native"}  # embedded volumes carry their native grid
    assert main(["evaluate", "--profile", "ci", "--checkpoint", str(ft / "final.pt"),
                 "--out", str(tmp_path / "e.csv")]) == 0
    again = pd.read_csv(tmp_path / "e.csv")
    pd.testing.assert_frame_equal(metrics, again)  # the saved best model is what was evaluated
    assert "mean foreground Dice" in capsys.readouterr().out


def test_experiment_grid_resumes_without_recomputing(tmp_path, monkeypatch):
    cfg = make_config("ci")
    calls = []
    real = finetuning.finetune

    def counting(*args, **kwargs):
        calls.append(kwargs["out"].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(finetuning, "finetune", counting)
    table = experiment.run_experiment(cfg, tmp_path, inits=["random", "GD+LR"], n_labelled=[1], seeds=[0],
                                      progress=False, log=lambda *_: None)
    assert len(calls) == 2
    assert list(table.columns) == experiment.CSV_COLUMNS
    assert set(table["strategy"]) == {"random", "GD+LR"}
    assert set(table["method"]) == {"random", "global+local"}
    assert table["dice"].between(0, 1).all()
    # widen the grid: only the new cells run; the finished ones are skipped
    calls.clear()
    table = experiment.run_experiment(cfg, tmp_path, inits=["random", "GD+LR"], n_labelled=[1], seeds=[0, 1],
                                      progress=False, log=lambda *_: None)
    assert sorted(calls) == ["n1_s1", "n1_s1"]
    assert len(table.groupby(["strategy", "seed"])) == 4
    # pre-training is shared: the GD+LR weights were not recomputed for seed 1
    assert (tmp_path / "pretrain" / "GD" / "final.pt").exists()
    # a different configuration is refused in the same folder
    with pytest.raises(ValueError, match="another configuration"):
        experiment.run_experiment(make_config("ci", finetune={"lr": 0.5}), tmp_path, inits=["random"],
                                  n_labelled=[1], seeds=[0], progress=False, log=lambda *_: None)


def test_two_shared_workers_finish_one_grid_together(tmp_path):
    """Two processes started with the same command and --shared: every cell recorded exactly once."""
    out = tmp_path / "grid"
    command = [sys.executable, "-m", "glcl_core", "experiment", "--profile", "ci", "--inits", "random", "GD",
               "--n-labelled", "1", "2", "--seeds", "0", "1", "--out", str(out), "--shared"]
    env = dict(os.environ, GLCL_PROFILE="ci", OMP_NUM_THREADS="1")
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for _ in range(2)]
    logs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    table = pd.read_csv(out / "results.csv")
    per_cell = table.groupby(["strategy", "n_labelled", "seed"]).size()
    assert len(per_cell) == 8 and per_cell.nunique() == 1  # all 2 x 2 x 2 cells, none recorded twice
    assert per_cell.iloc[0] == table[["volume", "class"]].drop_duplicates().shape[0]


def test_grid_dice_resolution_is_fixed_per_folder(tmp_path):
    """A new grid scores at native resolution; a grid folder from before the entry keeps the preprocessed grid
    (its CSV must not mix the two)."""
    import json

    cfg = make_config("ci")
    assert experiment._record_grid(tmp_path / "new", cfg, ["random"], [1], [0]) == "native"
    assert experiment._record_grid(tmp_path / "new", cfg, ["random"], [1], [1]) == "native"
    old = tmp_path / "old"
    experiment._record_grid(old, cfg, ["random"], [1], [0])
    spec = json.loads((old / "experiment.json").read_text())
    del spec["dice_resolution"]
    (old / "experiment.json").write_text(json.dumps(spec))
    assert experiment._record_grid(old, cfg, ["random"], [1], [0, 1]) == "resampled"
    assert json.loads((old / "experiment.json").read_text())["dice_resolution"] == "resampled"


def test_cli_experiment_on_varied_preset_with_own_finetune_length(tmp_path, capsys):
    import json

    out = tmp_path / "grid"
    assert main(["experiment", "--profile", "ci", "--embedded", "varied", "--finetune-iterations", "2",
                 "--inits", "random", "--n-labelled", "1", "--out", str(out)]) == 0
    config = json.loads((out / "experiment.json").read_text())["config"]
    assert config["data"]["embedded"] == "varied" and config["finetune"]["iterations"] == 2
    history = pd.read_csv(out / "finetune" / "random" / "n1_s0" / "history.csv")
    assert history["step"].max() == 2
    # the standard preset is another configuration: refused in the same folder
    assert main(["experiment", "--profile", "ci", "--finetune-iterations", "2", "--inits", "random",
                 "--n-labelled", "1", "--out", str(out)]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_labelled_draws_differ_by_seed(ci_split):
    from glcl_core.data.split import draw_labelled

    a = [v.name for v in draw_labelled(ci_split.pool, 2, 0)]
    b = [v.name for v in draw_labelled(ci_split.pool, 2, 1)]
    assert a != b and a == [v.name for v in draw_labelled(ci_split.pool, 2, 0)]
    test_names = {v.name for v in ci_split.test}
    assert not test_names & {v.name for v in ci_split.pool + ci_split.val}


def test_cli_small_folder_needs_explicit_split(tmp_path, capsys):
    """A folder with fewer volumes than the default split holds: a one-line error, then --n-test/--n-val fix it."""
    import json
    import shutil

    from glcl_core.data import embedded_dataset

    source = embedded_dataset()
    meta = json.loads((source / "dataset.json").read_text())
    small = tmp_path / "Task99_Small"
    (small / "imagesTr").mkdir(parents=True)
    (small / "labelsTr").mkdir()
    meta["training"] = meta["training"][:5]
    meta["numTraining"] = 5
    for pair in meta["training"]:
        for key in ("image", "label"):
            shutil.copy(source / pair[key], small / pair[key])
    (small / "dataset.json").write_text(json.dumps(meta))

    assert main(["pretrain", "--profile", "ci", "--data", str(small), "--out", str(tmp_path / "a")]) == 2
    assert "5 volumes cannot be split into 6 test" in capsys.readouterr().err
    assert main(["pretrain", "--profile", "ci", "--data", str(small), "--n-test", "1", "--n-val", "1",
                 "--out", str(tmp_path / "b")]) == 0
    assert "Split(pool=3, val=1, test=1)" in capsys.readouterr().out
    assert (tmp_path / "b" / "global" / "final.pt").is_file()


def test_cli_paper_protocol_flags(tmp_path, monkeypatch):
    """GLCL's ACDC protocol from the command line: ED frames, 1.367 mm, 20 test and 2 validation subjects, GLCL's
    fine-tuning loss; `--data` also takes the name of a data set to fetch."""
    import sys as _sys

    from glcl_core.cli.checks import _config
    from glcl_core.cli.parser import FINETUNE_LOSSES, build_parser
    from glcl_core.train.finetuning import SEGMENTATION_LOSSES

    assert set(FINETUNE_LOSSES) == set(SEGMENTATION_LOSSES)
    (tmp_path / "acdc").mkdir()
    args = build_parser().parse_args(
        ["experiment", "--profile", "gpu", "--data", str(tmp_path / "acdc"), "--frames", "ED", "--spacing", "1.367",
         "--n-test", "20", "--n-val", "2", "--finetune-loss", "glcl", "--n-classes", "4"])
    cfg = _config(args)
    assert (cfg.data.frames, cfg.data.spacing, cfg.data.n_test, cfg.data.n_val, cfg.finetune.loss) == (
        "ED", 1.367, 20, 2, "glcl")
    assert _config(build_parser().parse_args(["pretrain", "--profile", "ci"])).data.frames == "ED,ES"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--spacing", "0"])
    fetched = tmp_path / "cache" / "Task05_Prostate"
    fetched.mkdir(parents=True)
    monkeypatch.setattr(_sys.modules["glcl_core.data.fetching"], "fetch", lambda name: fetched)
    monkeypatch.chdir(tmp_path)  # no folder called Task05_Prostate here
    args = build_parser().parse_args(["pretrain", "--profile", "ci", "--data", "Task05_Prostate", "--n-classes", "3"])
    assert _config(args).data.path == str(fetched)
