"""Shipped checkpoints: export, load by name with the hash checked, clear errors on damage."""
from __future__ import annotations

import pytest
import torch

from glcl_core import checkpoints
from glcl_core.train import finetuning, pretrain
from glcl_core.train.config import make_config


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, ci_split):
    runs, folder = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("pretrained")
    cfg = make_config("ci")
    g = pretrain.pretrain_global(cfg, ci_split.pool, out=runs / "GD", progress=False)
    checkpoints.export(g.out / "final.pt", "GD", command="python -m glcl_core pretrain --strategy GD --profile ci",
                       wall_seconds=1.0, folder=folder)
    checkpoints.export(g.out / "final.pt", "GD-half", command="(test)", wall_seconds=1.0, folder=folder,
                       dtype="float16")
    return folder, g


def test_export_then_load_by_name_builds_the_configured_model(shipped, ci_split):
    folder, g = shipped
    assert checkpoints.available(folder) == ["GD", "GD-half"]
    ck = checkpoints.load_pretrained("GD", folder)
    assert ck.entry["sha256"] == checkpoints.sha256_of(ck.path) and ck.entry["stage"] == "global"
    # a global stage ships its encoder only (what fine-tuning loads from it), bit-exact
    shipped_keys = set(torch.load(ck.path, weights_only=False)["model"])
    assert shipped_keys == {k for k in g.model.state_dict() if k.startswith("encoder.")}
    net = ck.model()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in g.model.state_dict().items() if k in shipped_keys)
    half = checkpoints.load_pretrained("GD-half", folder).model()
    assert all(torch.allclose(half.state_dict()[k].float(), v.float(), atol=1e-2, rtol=1e-2)
               for k, v in g.model.state_dict().items() if v.is_floating_point() and k in shipped_keys)
    res = finetuning.finetune(ck.config, ci_split.pool[:1], [], init=ck.path, progress=False)
    assert res.extra["loaded"] == ["encoder"]


def test_damaged_missing_or_unknown_checkpoint_gives_a_clear_error(shipped, tmp_path):
    _, g = shipped
    folder = tmp_path  # a copy of its own: the module's shipped folder stays intact for the other tests
    checkpoints.export(g.out / "final.pt", "GD", command="python -m glcl_core pretrain --strategy GD --profile ci",
                       wall_seconds=1.0, folder=folder)
    ck = checkpoints.load_pretrained("GD", folder)
    data = bytearray(ck.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ck.path.write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match=r"GD\.pt: SHA-256 .* does not match the manifest.*"
                                                          r"git checkout.*pretrain --strategy GD"):
        checkpoints.load_pretrained("GD", folder)
    ck.path.unlink()
    with pytest.raises(checkpoints.CheckpointError, match="is missing"):
        checkpoints.load_pretrained("GD", folder)
    with pytest.raises(checkpoints.CheckpointError, match=r"no shipped checkpoint named 'PCL'.*shipped: GD\)"):
        checkpoints.load_pretrained("PCL", folder)


def test_every_shipped_checkpoint_matches_its_manifest():
    for name in checkpoints.available():
        ck = checkpoints.load_pretrained(name)
        assert ck.entry["bytes"] <= 10_000_000
        ck.model()


def test_every_committed_checkpoint_of_another_preset_matches_its_manifest():
    """results/pretrained/PRESET: the long-budget checkpoints the other presets' grids load (committed, not
    installed)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "results" / "pretrained"
    folders = sorted(p.parent for p in root.glob("*/manifest.json"))
    assert folders, "results/pretrained/PRESET/manifest.json expected"
    for folder in folders:
        for name in checkpoints.available(folder):
            ck = checkpoints.load_pretrained(name, folder)
            assert ck.entry["bytes"] <= 10_000_000 and ck.entry["config"]["data"]["embedded"] == folder.name
            ck.model()


def test_shipped_weights_match_the_runs_pretraining_configuration(shipped):
    folder, _ = shipped
    cfg = make_config("ci")
    found = checkpoints.shipped_weights(cfg, ["random", "GD"], folder)
    assert set(found) == {"GD"} and found["GD"].name in {"GD.pt", "GD-half.pt"}
    # fine-tuning settings do not decide pre-trained weights: still found
    assert "GD" in checkpoints.shipped_weights(make_config("ci", finetune={"lr": 0.5}), ["GD"], folder)
    # nor do how often a stage saves and logs
    assert "GD" in checkpoints.shipped_weights(make_config("ci", global_={"checkpoint_every": 7}), ["GD"], folder)
    # a global-stage setting does: refused, naming it
    with pytest.raises(checkpoints.CheckpointError, match=r"global_\.temperature: shipped 0\.1, asked 0\.5"):
        checkpoints.shipped_weights(make_config("ci", global_={"temperature": 0.5}), ["GD"], folder)
    with pytest.raises(checkpoints.CheckpointError, match=r"no shipped checkpoint for 'GD\+LR'"):
        checkpoints.shipped_weights(cfg, ["GD+LR"], folder)


def test_grid_uses_given_weights_and_refuses_to_mix_them(shipped, tmp_path):
    from glcl_core import experiment

    folder, _ = shipped
    cfg = make_config("ci", finetune={"freeze": True})
    weights = checkpoints.shipped_weights(cfg, ["GD"], folder)
    table = experiment.run_experiment(cfg, tmp_path, inits=["GD"], n_labelled=[1], seeds=[0], progress=False,
                                      log=lambda *_: None, pretrained=weights)
    assert set(table["strategy"]) == {"GD"} and not (tmp_path / "pretrain").exists()
    spec = (tmp_path / "experiment.json").read_text()
    assert checkpoints.sha256_of(weights["GD"]) in spec
    # the probe kept the given encoder: the fine-tuned run's encoder equals the shipped one
    final = torch.load(tmp_path / "finetune" / "GD" / "n1_s0" / "final.pt", weights_only=True)["model"]
    given = torch.load(weights["GD"], weights_only=True)["model"]
    enc = [k for k in given if k.startswith("encoder.") and given[k].is_floating_point()]
    assert enc and all(torch.equal(final[k].float(), given[k].float()) for k in enc)
    with pytest.raises(ValueError, match="other pre-trained weights"):
        experiment.run_experiment(cfg, tmp_path, inits=["GD"], n_labelled=[1], seeds=[1], progress=False,
                                  log=lambda *_: None)


def test_cli_experiment_probe_with_shipped_weights(shipped, tmp_path, monkeypatch, capsys):
    from glcl_core.cli import main

    folder, _ = shipped
    monkeypatch.setattr(checkpoints, "DEFAULT_FOLDER", folder)
    args = ["experiment", "--profile", "ci", "--shipped", "--probe", "--n-labelled", "1", "--out", str(tmp_path)]
    assert main(args + ["--inits", "random", "GD"]) == 0
    spec = (tmp_path / "experiment.json").read_text()
    assert '"freeze": true' in spec and checkpoints.sha256_of(folder / "GD.pt") in spec
    assert not (tmp_path / "pretrain").exists()
    assert main(args + ["--inits", "GD+LR"]) == 2
    assert "no shipped checkpoint for 'GD+LR'" in capsys.readouterr().err
    # other settings than the shipped file's: the error names the flags that ask for them
    assert main(args + ["--inits", "GD", "--embedded", "varied"]) == 2
    err = capsys.readouterr().err
    assert "pre-trained with other settings" in err
    assert err.rstrip().endswith("made with --profile ci --embedded standard")
    assert err.count("\n") == 1


def test_chapter_weights_use_shipped_ones_or_pretrain(shipped, tmp_path):
    from glcl_core.book import pretrained_weights

    folder, _ = shipped
    said = []
    found = pretrained_weights(make_config("ci"), ["random", "GD"], tmp_path, folder=folder, log=said.append)
    assert set(found) == {"GD"} and found["GD"].parent == folder and not (tmp_path / "pretrain").exists()
    # retrain: pre-trained here, in the grid's layout
    found = pretrained_weights(make_config("ci"), ["GD"], tmp_path, retrain=True, folder=folder, log=said.append)
    assert found["GD"] == tmp_path / "pretrain" / "GD" / "final.pt" and found["GD"].is_file()
    from glcl_core.experiment import open_grid_dir

    open_grid_dir(tmp_path).release()  # still a grid folder: the chapter's run_experiment(cfg, out) can follow
    # no shipped checkpoint with these settings: says why and pre-trains
    other = make_config("ci", global_={"temperature": 0.5})
    found = pretrained_weights(other, ["GD"], tmp_path / "other", folder=folder, log=said.append)
    assert found["GD"].is_file() and "global_.temperature: shipped 0.1, asked 0.5" in said[-1]


# ------------------------------------------------------------------------------ files that are not checkpoints
import errno  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402

import numpy as np  # noqa: E402

from glcl_core.train import checkpoint as ckpt_mod  # noqa: E402
from glcl_core.train.checkpoint import CheckpointFormatError, DiskFullError, load_checkpoint  # noqa: E402


def _empty(path):
    path.write_bytes(b"")


def _csv(path):
    path.write_text("volume,class,dice\ncase_00,1,0.5\n")


def _pickle(path):
    with open(path, "wb") as fh:
        pickle.dump({"a": 1}, fh)


def _numpy_inside(path):
    torch.save({"model": np.zeros(3)}, path)


def _a_list(path):
    torch.save([1, 2, 3], path)


def _truncated(path):
    ckpt_mod.save_checkpoint(path, {"model": {"w": torch.zeros(4)}, "stage": "finetune"})
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize("make, says", [
    (_empty, "is empty (0 bytes), not a checkpoint"),
    (_csv, "is a text file (first line: 'volume,class,dice'), not a checkpoint"),
    (_pickle, "is not a PyTorch checkpoint (zip archive)"),
    (_numpy_inside, "is a PyTorch file but not a glcl_core checkpoint (it holds a numpy"),
    (_a_list, "is a PyTorch file holding a list, not a glcl_core checkpoint"),
    (_truncated, "is a damaged or truncated PyTorch checkpoint"),
])
def test_files_that_are_not_checkpoints_are_named_in_one_line(tmp_path, make, says):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(CheckpointFormatError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert isinstance(err.value, ValueError) and text.startswith(f"{path}: ") and says in text, text
    assert "\n" not in text and "weights_only=False" not in text and "weights_only" not in text
    assert err.value.__cause__ is None  # torch's own message (which suggests weights_only=False) is not chained


def test_legacy_and_current_torch_files_still_load(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "stage": "global"}
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    ckpt_mod.save_checkpoint(tmp_path / "new.pt", state)
    for name in ("old.pt", "new.pt"):
        ckpt = load_checkpoint(tmp_path / name)
        assert ckpt["stage"] == "global" and torch.equal(ckpt["model"]["w"], torch.ones(2))


# ------------------------------------------------------------------------------------------------- full disk
def full_disk(monkeypatch) -> None:
    """os.write raises ENOSPC for the temporary files of atomic writes (``.NAME.XXXX.tmp``), as on a full disk."""
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("write", [
    lambda path: ckpt_mod.atomic_write_text(path, "new\n"),
    lambda path: ckpt_mod.save_checkpoint(path, {"model": {"w": torch.zeros(3)}}),
    lambda path: ckpt_mod.write_history(path, [{"step": 1, "loss": 0.5}]),
])
def test_full_disk_is_one_line_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, write):
    path = tmp_path / "last.pt"
    path.write_text("old\n")
    full_disk(monkeypatch)
    with pytest.raises(DiskFullError) as err:
        write(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "no space left on device (ENOSPC)" in text and "\n" not in text
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"] and path.read_text() == "old\n"

