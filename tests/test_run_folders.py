"""Run folders: only glcl_core's own folders are written or replaced, one process per folder, clean Ctrl-C,
clear resume messages, no orphan temporary files and no half folders after a failed start."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from glcl_core import experiment
from glcl_core.cli import main
from glcl_core.train import checkpoint as ckpt_mod
from glcl_core.train import finetuning, pretrain, run_folder
from glcl_core.train.config import make_config
from glcl_core.train.lock import LOCK_NAME, FolderLock, RunLockedError

FAST = {"global_": {"iterations": 2, "checkpoint_every": 1}}


def _cfg(**overrides):
    parts = {k: dict(v) for k, v in FAST.items()}
    for k, v in overrides.items():
        parts.setdefault(k, {}).update(v)
    return make_config("ci", **parts)


def _lines(err: str) -> list[str]:
    """stderr's lines but the collapse monitor's warnings (a seconds-long ci run may look collapsed)."""
    return [line for line in err.splitlines() if not line.startswith("warning:")]


def _dead_pid() -> int:
    """A pid no process has now (a child that has exited and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------------------------- marker, overwrite
def test_run_folder_is_marked(ci_split, tmp_path):
    out = tmp_path / "r"
    pretrain.pretrain_global(_cfg(), ci_split.pool, out=out, progress=False)
    marker = json.loads((out / run_folder.MARKER_NAME).read_text())
    assert marker["project"] == "glcl_core" and marker["stage"] == "global" and marker["created"]
    assert not (out / LOCK_NAME).exists()  # released when the stage ended
    assert run_folder.folder_kind(out) == "marked" and run_folder.has_run(out)


def test_overwrite_never_deletes_a_foreign_folder(ci_split, tmp_path):
    """The bug: --overwrite deleted any folder holding a config.json (shutil.rmtree)."""
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    (thesis / "config.json").write_text('{"latex": true}')
    before = sorted(p.name for p in thesis.iterdir())
    for kwargs in ({"overwrite": True}, {}, {"resume": True}):
        with pytest.raises(run_folder.NotARunFolderError, match=r"thesis is not empty and is not a glcl_core run"):
            pretrain.pretrain_global(_cfg(), ci_split.pool, out=thesis, progress=False, **kwargs)
    assert sorted(p.name for p in thesis.iterdir()) == before  # nothing written, not even a lock
    assert (thesis / "thesis.tex").read_text() == "years of work"


def test_fresh_run_refuses_a_non_empty_foreign_folder_but_takes_an_empty_one(tmp_path):
    cfg = _cfg()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(run_folder.NotARunFolderError, match="choose a new or empty folder"):
        run_folder.prepare_run_dir(tmp_path / "notes", cfg)
    (tmp_path / "empty").mkdir()
    run_folder.prepare_run_dir(tmp_path / "empty", cfg, stage="global")
    assert run_folder.read_marker(tmp_path / "empty")["stage"] == "global"
    with pytest.raises(run_folder.NotARunFolderError, match="is a file"):
        (tmp_path / "f").write_text("x")
        run_folder.prepare_run_dir(tmp_path / "f", cfg)


def test_overwrite_replaces_only_our_files_and_refuses_other_files(ci_split, tmp_path):
    out = tmp_path / "r"
    cfg = _cfg()
    pretrain.pretrain_global(cfg, ci_split.pool, out=out, progress=False)
    (out / "figure.png").write_bytes(b"png")
    with pytest.raises(run_folder.RunExistsError, match=r"figure\.png.*delete the folder by hand"):
        pretrain.pretrain_global(cfg, ci_split.pool, out=out, overwrite=True, progress=False)
    assert (out / "figure.png").exists() and (out / "final.pt").exists()  # nothing deleted
    (out / "figure.png").unlink()
    old_final = (out / "final.pt").stat().st_mtime_ns
    (out / ".last.pt.abc123.tmp").write_bytes(b"half")
    pretrain.pretrain_global(cfg, ci_split.pool, out=out, overwrite=True, progress=False)
    assert (out / "final.pt").stat().st_mtime_ns != old_final
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [run_folder.MARKER_NAME, "config.json", "final.pt", "history.csv", "last.pt"])


def test_unmarked_older_run_resumes_but_is_not_overwritten(ci_split, tmp_path):
    out = tmp_path / "old"
    cfg = _cfg()
    pretrain.pretrain_global(cfg, ci_split.pool, out=out, progress=False)
    (out / run_folder.MARKER_NAME).unlink()  # as written before the marker existed
    assert run_folder.folder_kind(out) == "legacy"
    with pytest.raises(run_folder.RunExistsError, match="delete the folder by hand"):
        pretrain.pretrain_global(cfg, ci_split.pool, out=out, overwrite=True, progress=False)
    assert (out / "final.pt").exists()
    with pytest.raises(run_folder.RunExistsError, match="already holds a run"):
        pretrain.pretrain_global(cfg, ci_split.pool, out=out, progress=False)
    pretrain.pretrain_global(cfg, ci_split.pool, out=out, resume=True, progress=False)
    marker = run_folder.read_marker(out)
    assert marker["adopted"] is True and marker["source"] is None  # ours, but which code made it is unknown
    # an older grid cell kept as text (config.json and history.csv, weights deleted) is a run too
    cell = tmp_path / "cell"
    cell.mkdir()
    cfg.to_json(cell / "config.json")
    (cell / "history.csv").write_text("step,loss\n1,0.5\n")
    assert run_folder.folder_kind(cell) == "legacy"
    with pytest.raises(run_folder.RunExistsError, match="delete the folder by hand"):
        run_folder.prepare_run_dir(cell, cfg, overwrite=True)
    run_folder.prepare_run_dir(cell, cfg, resume=True, stage="global")
    assert (cell / "history.csv").exists() and run_folder.read_marker(cell)["stage"] == "global"


# --------------------------------------------------------------------------------------------- --out vs --data
def test_out_inside_equal_or_above_the_data_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("x")
    cache = os.environ["GLCL_DATA_DIR"]
    cases = [
        ["pretrain", "--data", str(data), "--out", str(data / "runs")],
        ["finetune", "--data", str(data), "--out", str(data)],
        ["experiment", "--data", str(data), "--out", str(tmp_path)],
        ["pretrain", "--out", os.path.join(cache, "runs")],
        ["evaluate", "--checkpoint", str(data / "keep.txt"), "--data", str(data), "--out", str(data / "s.csv")],
    ]
    for args in cases:
        assert main([*args, "--profile", "ci"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: --out") and err.count("\n") == 1 and "data folder" in err, err
    assert sorted(p.name for p in data.iterdir()) == ["keep.txt"]


def test_evaluate_refuses_to_replace_a_file_that_is_not_its_own(tmp_path, capsys):
    precious = tmp_path / "results.csv"
    precious.write_text("subject,score\na,1\n")
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"")
    assert main(["evaluate", "--profile", "ci", "--checkpoint", str(ckpt), "--out", str(precious)]) == 2
    err = capsys.readouterr().err
    assert "not a score table written by evaluate" in err and err.count("\n") == 1
    assert precious.read_text() == "subject,score\na,1\n"
    assert main(["evaluate", "--profile", "ci", "--checkpoint", str(ckpt), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------- locks
def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock (for up to a minute); kill it to leave a stale lock behind."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from glcl_core.train.lock import FolderLock
        FolderLock({str(folder)!r}).acquire()
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_locked_run_folder_is_refused_with_the_pid(ci_split, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} on") as info:
            pretrain.pretrain_global(_cfg(), ci_split.pool, out=out, progress=False)
        assert info.value.pid == holder.pid
        assert not (out / "config.json").exists()  # refused before writing
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed: its lock file stays): a stale lock, taken over
    pretrain.pretrain_global(_cfg(), ci_split.pool, out=out, progress=False)
    assert (out / "final.pt").exists() and not (out / LOCK_NAME).exists()


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    dead = _dead_pid()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "token": "old"}))
    run_folder.prepare_run_dir(out, _cfg())
    assert f"taking over a stale lock of pid {dead}" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists() and (out / "config.json").exists()
    # a lock of a live process on another host cannot be checked: refused, saying what to delete
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": "elsewhere", "token": "x"}))
    with pytest.raises(RunLockedError, match=rf"pid {dead} on elsewhere.*delete .*{LOCK_NAME}"):
        run_folder.prepare_run_dir(out, _cfg(), resume=True)


def test_shared_grid_leaves_a_running_cell_to_its_worker_and_records_each_cell_once(tmp_path, monkeypatch):
    cfg, out = make_config("ci"), tmp_path / "grid"
    grid = {"inits": ["random"], "n_labelled": [1], "progress": False, "shared": True}
    experiment.open_grid_dir(out).release()  # a new grid folder...
    claimed, busy = out / ".claims" / "random_n1_s1", out / "finetune" / "random" / "n1_s2"
    claimed.mkdir(parents=True)
    busy.mkdir(parents=True)
    # another worker holds seed 1's claim; another process holds seed 2's run folder
    holders = [_hold_lock(claimed), _hold_lock(busy)]
    try:
        logs = []
        table = experiment.run_experiment(cfg, out, seeds=[0, 1, 2], log=logs.append, **grid)
        assert set(table["seed"]) == {0}
        assert [line.strip() for line in logs if "another worker" in line] == [
            "random n=1 seed=1: another worker is running it", "random n=1 seed=2: another worker is running it"]
        assert not (out / LOCK_NAME).exists()  # the grid folder is locked only while a cell is recorded
        assert not (out / ".claims" / "random_n1_s0" / LOCK_NAME).exists()  # a claim ends with its record
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    table = experiment.run_experiment(cfg, out, seeds=[0, 1, 2], log=lambda *_: None, **grid)  # both are gone
    rows_per_cell = table.groupby("seed").size()
    assert list(rows_per_cell.index) == [0, 1, 2] and rows_per_cell.nunique() == 1

    # a worker without claims (an older glcl_core) records seed 3 while this one trains it: recorded once
    real = finetuning.finetune

    def recorded_meanwhile(*args, **kwargs):
        result = real(*args, **kwargs)
        other = table[table["seed"] == 0].assign(seed=3)
        experiment.append_rows(out / "results.csv", other.to_dict("records"))
        return result

    monkeypatch.setattr(finetuning, "finetune", recorded_meanwhile)
    table = experiment.run_experiment(cfg, out, seeds=[0, 1, 2, 3], log=lambda *_: None, **grid)
    assert table.groupby("seed").size().to_dict() == {s: rows_per_cell.iloc[0] for s in (0, 1, 2, 3)}


def test_shared_worker_stops_when_a_grid_is_held_from_start_to_end(tmp_path, monkeypatch):
    out = tmp_path / "grid"
    experiment.open_grid_dir(out).release()  # an experiment folder...
    holder = _hold_lock(out)  # ...that a run without shared=True holds
    monkeypatch.setattr(experiment, "GRID_WAIT_SECONDS", 0.5)
    try:
        with pytest.raises(RunLockedError, match=r"stayed locked for 0 s; a run without --shared"):
            experiment.run_experiment(make_config("ci"), out, inits=["random"], n_labelled=[1], seeds=[0],
                                      progress=False, log=lambda *_: None, shared=True)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "results.csv").exists()


def test_lock_is_released_on_exceptions(tmp_path):
    lock = FolderLock(tmp_path)
    with pytest.raises(RuntimeError):
        with lock:
            assert (tmp_path / LOCK_NAME).exists()
            with pytest.raises(RunLockedError, match="this process"):
                FolderLock(tmp_path).acquire()
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()


def test_two_experiments_on_one_folder_never_record_a_cell_twice(tmp_path, capsys):
    """A second grid run on a folder another process holds is refused at once (one line, exit 2), before it reads
    the finished cells; the holder's results stay as they were."""
    out = tmp_path / "grid"
    args = ["experiment", "--profile", "ci", "--inits", "random", "--n-labelled", "1", "--seeds", "0",
            "--finetune-iterations", "2", "--out", str(out)]
    assert main(args) == 0
    rows = pd.read_csv(out / "results.csv")
    holder = _hold_lock(out)
    try:
        capsys.readouterr()
        assert main([*args[:-2], "--seeds", "0", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {holder.pid}" in err and "in use" in err
    finally:
        holder.kill()
        holder.wait()
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), rows)
    # a re-run once the holder is gone skips the finished cell: no duplicate rows
    assert main(args) == 0
    again = pd.read_csv(out / "results.csv")
    assert len(again) == len(rows) and not again.duplicated(["strategy", "n_labelled", "seed", "volume", "class"]).any()
    assert run_folder.read_marker(out)["stage"] == "experiment"


def test_experiment_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "paper.md").write_text("draft")
    with pytest.raises(run_folder.NotARunFolderError, match="not a glcl_core grid folder"):
        experiment.run_experiment(make_config("ci"), tmp_path, inits=["random"], n_labelled=[1], seeds=[0],
                                  progress=False, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper.md"]


# ------------------------------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_prints_one_line_exits_130_and_resume_continues(tmp_path, monkeypatch, capsys):
    out = tmp_path / "pre"
    real_step = pretrain._optimiser_step
    calls = {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # during the 4th step of the global stage: 3 steps done, last.pt of step 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(pretrain, "_optimiser_step", interrupted_step)
    args = ["pretrain", "--profile", "ci", "--strategy", "GD", "--iterations", "4", "--out", str(out)]
    assert main(args) == 130
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("interrupted at step 3 (global GD); last checkpoint at step 2")
    assert lines[0].endswith(f"resume with: python -m glcl_core {' '.join(args)} --resume")
    assert ckpt_mod.load_checkpoint(out / "global" / "last.pt")["step"] == 2  # intact
    assert not (out / "global" / LOCK_NAME).exists()  # released
    monkeypatch.setattr(pretrain, "_optimiser_step", real_step)
    calls["n"] = 0
    assert main([*args, "--resume"]) == 0
    history = pd.read_csv(out / "global" / "history.csv")
    assert list(history["step"]) == [1, 2, 3, 4]
    assert ckpt_mod.load_checkpoint(out / "global" / "last.pt")["step"] == 4


def test_interrupt_before_the_first_checkpoint_leaves_no_run(ci_split, tmp_path, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.setattr(pretrain, "_optimiser_step", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    from glcl_core.train.engine import TrainingInterrupted

    with pytest.raises(TrainingInterrupted) as info:
        pretrain.pretrain_global(_cfg(), ci_split.pool, out=out, progress=False)
    assert (info.value.step, info.value.checkpoint_step) == (0, 0)
    assert not out.exists()  # nothing worth keeping: the retry starts cleanly


# ---------------------------------------------------------------------------------------------- resume messages
def test_resume_without_an_earlier_run_says_it_starts_fresh(tmp_path, capsys):
    out = tmp_path / "pre"
    args = ["pretrain", "--profile", "ci", "--iterations", "1", "--out", str(out), "--resume"]
    assert main(args) == 0
    assert _lines(capsys.readouterr().err) == [f"--resume: no earlier run in {out / 'global'}; starting a fresh run"]
    assert (out / "global" / "final.pt").exists()
    assert main(args) == 0  # now there is one: resumed, nothing said
    assert _lines(capsys.readouterr().err) == []


def test_refused_resume_names_the_differences(ci_split, tmp_path):
    out = tmp_path / "r"
    pretrain.pretrain_global(_cfg(), ci_split.pool, out=out, progress=False)
    config_before = (out / "config.json").read_text()
    other = _cfg(global_={"lr": 0.5, "temperature": 0.2})
    with pytest.raises(ValueError, match=r"differs.*global_\.lr: 0\.001 -> 0\.5; global_\.temperature: 0\.1 -> 0\.2"):
        pretrain.pretrain_global(other, ci_split.pool, out=out, resume=True, progress=False)
    # a finished run is not resumed with fewer iterations (and config.json is not rewritten)
    with pytest.raises(ValueError, match="finished 2 global iterations and this one asks for 1"):
        pretrain.pretrain_global(_cfg(global_={"iterations": 1}), ci_split.pool, out=out, resume=True, progress=False)
    assert (out / "config.json").read_text() == config_before
    # a run of another stage is not resumed as this one
    with pytest.raises(ValueError, match="holds a global run, not a local run"):
        pretrain.pretrain_local(_cfg(), ci_split.pool, init=out / "final.pt", out=out, resume=True, progress=False)
    # more iterations: allowed, the run continues
    longer = pretrain.pretrain_global(_cfg(global_={"iterations": 3}), ci_split.pool, out=out, resume=True,
                                   progress=False)
    assert list(longer.history["step"]) == [1, 2, 3]


# ------------------------------------------------------------------------------------- orphans, failed start-up
def test_orphan_temporary_files_are_removed_at_the_next_start(ci_split, tmp_path):
    out = tmp_path / "r"
    cfg = _cfg()
    pretrain.pretrain_global(cfg, ci_split.pool, out=out, progress=False)
    orphans = [".last.pt.k1ll3d.tmp", ".history.csv.x9.tmp", ".config.json.q.tmp"]
    for name in orphans:
        (out / name).write_bytes(b"half written")
    (out / ".mine.tmp").write_text("not one of ours")  # left alone: not a temporary file of our writes
    pretrain.pretrain_global(cfg, ci_split.pool, out=out, resume=True, progress=False)
    assert not any((out / name).exists() for name in orphans)
    assert (out / ".mine.tmp").exists()


def test_failed_start_up_leaves_no_half_run_folder(ci_split, tmp_path):
    out = tmp_path / "r"
    bad = _cfg(global_={"optimizer": "rmsprop"})  # raises while the stage is built, before the first step
    with pytest.raises(ValueError, match="unknown optimizer"):
        pretrain.pretrain_global(bad, ci_split.pool, out=out, progress=False)
    assert not out.exists()
    # an existing empty folder stays, empty
    out.mkdir()
    with pytest.raises(ValueError, match="unknown optimizer"):
        pretrain.pretrain_global(bad, ci_split.pool, out=out, progress=False)
    assert out.exists() and not any(out.iterdir())
    # a half folder left by a process killed during start-up (marker and config, no results) does not block
    run_folder.prepare_run_dir(out, bad, stage="global")
    pretrain.pretrain_global(_cfg(), ci_split.pool, out=out, progress=False)
    assert (out / "final.pt").exists()


# ---------------------------------------------------------------------------------------------- code provenance
def _pretend_other_source(folder):
    """Rewrite ``folder``'s marker as if another version of the code had made it."""
    marker = run_folder.read_marker(folder)
    marker["source"] = "0123456789ab"
    (folder / run_folder.MARKER_NAME).write_text(json.dumps(marker))


def test_resuming_a_run_that_other_code_made_warns_and_the_same_code_does_not(ci_split, tmp_path, recwarn):
    from glcl_core.provenance import OtherSourceWarning, source_fingerprint

    out = tmp_path / "r"
    pretrain.pretrain_global(_cfg(), ci_split.pool, out=out, progress=False)
    assert run_folder.read_marker(out)["source"] == source_fingerprint()
    pretrain.pretrain_global(_cfg(global_={"iterations": 3}), ci_split.pool, out=out, resume=True, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, OtherSourceWarning)]
    _pretend_other_source(out)
    with pytest.warns(OtherSourceWarning, match=r"another version of glcl_core's code \(source 0123456789ab"):
        pretrain.pretrain_global(_cfg(global_={"iterations": 4}), ci_split.pool, out=out, resume=True,
                                 progress=False)


def test_a_grid_reused_after_the_code_changed_says_so(ci_split, tmp_path, recwarn):
    from glcl_core.provenance import OtherSourceWarning

    out = tmp_path / "grid"
    cfg = _cfg(finetune={"iterations": 2})
    experiment.run_experiment(cfg, out, inits=["random", "GD"], n_labelled=[1], seeds=[0], progress=False,
                              log=lambda *_: None)
    experiment.run_experiment(cfg, out, inits=["random", "GD"], n_labelled=[1], seeds=[0], progress=False,
                              log=lambda *_: None)
    assert not [w for w in recwarn if issubclass(w.category, OtherSourceWarning)]
    _pretend_other_source(out)  # the grid folder's own marker does not count: each cell records its code
    assert experiment.run_experiment(cfg, out, inits=["random", "GD"], n_labelled=[1], seeds=[0], progress=False,
                                     log=lambda *_: None) is not None
    assert not [w for w in recwarn if issubclass(w.category, OtherSourceWarning)]
    for folder in (out / "finetune" / "GD" / "n1_s0", out / "pretrain" / "GD"):
        _pretend_other_source(folder)
    with pytest.warns(OtherSourceWarning) as caught:
        experiment.run_experiment(cfg, out, inits=["random", "GD"], n_labelled=[1, 2], seeds=[0], progress=False,
                                  log=lambda *_: None)
    messages = [str(w.message) for w in caught if issubclass(w.category, OtherSourceWarning)]
    assert any("1 of its finished cells" in m and "0123456789ab (1)" in m for m in messages)
    assert any("pretrain/GD: its finished weights" in m for m in messages)


def test_a_run_without_checkpoint_restarts_with_this_code_and_no_warning(ci_split, tmp_path, recwarn):
    from glcl_core.provenance import OtherSourceWarning, source_fingerprint

    out = tmp_path / "r"
    pretrain.pretrain_global(_cfg(), ci_split.pool, out=out, progress=False)
    for name in ("last.pt", "final.pt"):  # a history only, e.g. a run folder committed as text
        (out / name).unlink()
    _pretend_other_source(out)
    pretrain.pretrain_global(_cfg(), ci_split.pool, out=out, resume=True, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, OtherSourceWarning)]
    assert run_folder.read_marker(out)["source"] == source_fingerprint()
