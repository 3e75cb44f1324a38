"""Bad input, end to end: each case runs the command line in-process and must print one line (no traceback), exit
with the documented code, and leave every input file as it was (same SHA-256, no new file). The cases fail before
any training starts. The README's "Bad input" list matches this table."""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from glcl_core.cli import main
from glcl_core.train import checkpoint as ckpt_mod
from test_checkpoints import _csv, _empty, _pickle  # the same bad files the loader tests use
from test_data_bad_input import huge_header, make_task, save, scan, set_training_entry


def tiny_folder(folder: Path, n: int = 4) -> Path:
    """A plain folder of ``n`` 16x16x6 NIfTI images with their ``_seg`` labels."""
    for i in range(n):
        image, label = scan(shape=(16, 16, 6), seed=i)
        save(folder / f"case_{i}_seg.nii.gz", label)
        save(folder / f"case_{i}.nii.gz", image)
    return folder


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (and the folders, so that a new empty folder is seen too)."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return out


# Each case: (id, build(root, runs) -> argv, expected exit code, fragment of the one-line message).
# ``root`` holds every input (hashed before and after); ``runs`` is where an output would go (it must stay absent).
def _missing(root, runs):
    return ["data", "--data", str(root / "missing")]


def _a_file(root, runs):
    return ["data", "--data", str(tiny_folder(root / "good") / "case_0.nii.gz")]


def _dev_null(root, runs):
    return ["data", "--data", "/dev/null"]


def _task_entry(entry):
    def build(root, runs):
        task = make_task(root / "task")
        set_training_entry(task, 1, entry)
        return ["data", "--data", str(task)]
    return build


def _huge_header(root, runs):
    tiny_folder(root / "huge", n=1)
    huge_header(root / "huge" / "huge.nii")
    return ["data", "--data", str(root / "huge")]


def _evaluate(make_checkpoint):
    def build(root, runs):
        good = tiny_folder(root / "good")
        ckpt = root / "model.pt"
        make_checkpoint(ckpt)
        return ["evaluate", "--profile", "ci", "--data", str(good), "--checkpoint", str(ckpt),
                "--out", str(runs / "scores.csv")]
    return build


def _finetune_init(make_checkpoint):
    def build(root, runs):
        good = tiny_folder(root / "good")
        ckpt = root / "init.pt"
        make_checkpoint(ckpt)
        return ["finetune", "--profile", "ci", "--data", str(good), "--init", str(ckpt), "--out", str(runs / "ft")]
    return build


def _pretraining(stage):
    def make(path):
        ckpt_mod.save_checkpoint(path, {"model": {}, "stage": stage, "strategy": "GD"})
    return make


def _out_inside_data(root, runs):
    good = tiny_folder(root / "good")
    return ["finetune", "--profile", "ci", "--data", str(good), "--out", str(good / "runs")]


def _foreign_out_overwrite(root, runs):
    good = tiny_folder(root / "good")
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    return ["finetune", "--profile", "ci", "--data", str(good), "--n-test", "1", "--n-val", "1",
            "--n-labelled", "1", "--out", str(mine), "--overwrite"]


CASES = [
    ("data-missing", _missing, 2, "missing: no such file or folder"),
    ("data-is-a-file", _a_file, 2, "case_0.nii.gz: is a file; give the data folder"),
    ("data-dev-null", _dev_null, 2, "--data /dev/null: is a device or other special file"),
    ("dataset-json-not-a-string", _task_entry({"image": 5, "label": "./labelsTr/case_01.nii.gz"}), 2,
     "'image' must be a path string, got int 5"),
    ("dataset-json-escaping-path", _task_entry({"image": "../outside.nii.gz", "label": "./labelsTr/case_01.nii.gz"}),
     2, "'image' '../outside.nii.gz' points outside the data folder"),
    ("header-huge-shape", _huge_header, 2, "(20000, 20000, 20000)"),
    ("evaluate-empty-checkpoint", _evaluate(_empty), 2, "model.pt: is empty (0 bytes), not a checkpoint"),
    ("evaluate-csv-checkpoint", _evaluate(_csv), 2, "model.pt: is a text file (first line: 'volume,class,dice'), "
                                                    "not a checkpoint"),
    ("evaluate-pretraining-checkpoint", _evaluate(_pretraining("global")), 2,
     "is a pre-training checkpoint (global stage)"),
    ("evaluate-local-stage-checkpoint", _evaluate(_pretraining("local")), 2, "fine-tune it first: python -m "
                                                                             "glcl_core finetune --init"),
    ("finetune-init-pickle", _finetune_init(_pickle), 2, "init.pt: is not a PyTorch checkpoint (zip archive)"),
    ("finetune-init-empty", _finetune_init(_empty), 2, "init.pt: is empty (0 bytes), not a checkpoint"),
    ("out-inside-data", _out_inside_data, 2, "is inside the data folder"),
    ("foreign-out-with-overwrite", _foreign_out_overwrite, 2,
     "is not empty and is not a glcl_core run folder (no .glcl_run.json; it holds notes.txt): nothing was written "
     "there (--overwrite only replaces folders glcl_core made)"),
]


@pytest.mark.parametrize("build, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, capsys, build, code, fragment):
    root, runs = tmp_path / "in", tmp_path / "runs"
    root.mkdir()
    argv = build(root, runs)
    before = snapshot(root)
    capsys.readouterr()
    assert main(argv) == code, capsys.readouterr()
    captured = capsys.readouterr()
    output = captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if not line.startswith("warning:")]
    assert fragment in output, output
    assert len(errors) == 1 and errors[0].startswith("error: "), captured.err
    assert "Traceback" not in output and "weights_only=False" not in output
    assert snapshot(root) == before  # every input file unchanged, no new file or folder among the inputs
    assert not runs.exists()  # nothing written where an output would have gone


def test_full_disk_prints_one_line_exits_1_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """ENOSPC while the run folder's first file (its marker) is written: one line naming it, no temporary file,
    and the fresh run folder it made is removed."""
    root = tmp_path / "in"
    good = tiny_folder(root / "good")
    out = tmp_path / "runs" / "ft"
    before = snapshot(root)
    real = os.write

    def write(fd, data):  # a full disk for the temporary files of atomic writes only
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    code = main(["finetune", "--profile", "ci", "--data", str(good), "--n-test", "1", "--n-val", "1",
                 "--n-labelled", "1", "--out", str(out)])
    monkeypatch.undo()
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if not line.startswith("warning:")]
    assert code == 1 and len(errors) == 1, captured.err
    assert (errors[0].startswith(f"error: {out / '.glcl_run.json'}: ")
            and "no space left on device (ENOSPC)" in errors[0])
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists() and snapshot(root) == before
