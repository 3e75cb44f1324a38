"""Run folders and checkpoints that survive a dropped session.

Checkpoints are written to a temporary file in the same folder and then renamed, so a crash mid-write never leaves a
truncated ``last.pt``; they hold only tensors and plain containers and are read with ``weights_only=True``.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from glcl_core.train.config import RUNTIME_PARTS, RunConfig


class RunExistsError(FileExistsError):
    """The run folder already holds a run and neither ``resume`` nor ``overwrite`` was asked for."""


def prepare_run_dir(out: str | Path, cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Create or reopen a run folder and write ``config.json``.

    ``resume=True`` reopens a folder whose saved config equals ``cfg`` (the iteration count may grow).
    ``overwrite=True`` replaces an existing run. Otherwise an existing run raises ``RunExistsError``.
    """
    out = Path(out)
    config_file = out / "config.json"
    if config_file.exists():
        if resume:
            saved = RunConfig.from_json(config_file).to_dict()
            wanted = cfg.to_dict()
            if comparable(saved) != comparable(wanted):
                raise ValueError(f"{config_file}: cannot resume, the saved configuration differs from this one")
        elif overwrite:
            shutil.rmtree(out)
        else:
            raise RunExistsError(f"{out} already holds a run; pass resume=True or overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_file, _json(cfg))
    return out


def comparable(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict without what may change when a run resumes: iteration counts and speed settings."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items() if k not in RUNTIME_PARTS}
    for part in ("global_", "local", "finetune"):
        d[part].pop("iterations", None)
    return d


def _json(cfg: RunConfig) -> str:
    import json

    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"


def _usual_mode(tmp: str) -> None:
    """Give a temporary file the mode an ordinary new file gets (0666 minus the umask), not mkstemp's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    _usual_mode(tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        _usual_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from err


def resumed_step(run_dir: str | Path) -> int:
    """The step an interrupted run in ``run_dir`` resumes from (its ``last.pt``; 0 when there is none)."""
    last = Path(run_dir) / "last.pt"
    return int(load_checkpoint(last).get("step", 0)) if last.exists() else 0


def write_history(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """``history.csv``: one row per logged step; columns are the union of the rows' keys."""
    path = Path(path)
    if not rows:
        return
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
