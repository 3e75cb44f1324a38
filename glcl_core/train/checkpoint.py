"""Checkpoint files: atomic writes (temporary file renamed over the target; a full disk raises DiskFullError),
saving and safely loading checkpoints, the step a run resumes from, and ``history.csv``.

Checkpoints are written to a temporary file in the same folder and then renamed, so a crash mid-write never leaves a
truncated ``last.pt``; they hold only tensors and plain containers and are read with ``weights_only=True``. Run
folders (marker, overwrite and resume rules, orphan temporary files) are :mod:`glcl_core.train.run_folder`.
"""
from __future__ import annotations

import csv
import errno
import io
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointFormatError(ValueError):
    """A file given as a checkpoint is not one glcl_core can read (empty, text, a foreign pickle, damaged, or a
    PyTorch file holding something other than a checkpoint's dict). The message is one line naming the file."""


class DiskFullError(OSError):
    """An atomic write ran out of disk space (ENOSPC): the target is unchanged and no temporary file is left."""

    def __init__(self, path: str | Path):
        message = (f"{path}: could not write it, no space left on device (ENOSPC); the previous file, if any, is "
                   "unchanged: free some space and run again")
        super().__init__(errno.ENOSPC, message, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


def _usual_mode(tmp: str) -> None:
    """Give a temporary file the mode an ordinary new file gets (0666 minus the umask), not mkstemp's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file ``.NAME.XXXXXXXX.tmp`` beside it, renamed over it when
    complete. A full disk raises :class:`DiskFullError` (one line naming ``path``) and removes the temporary file;
    ``path`` keeps its previous content."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        _usual_mode(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno == errno.ENOSPC and not isinstance(err, DiskFullError):
            raise DiskFullError(path) from err
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file ``.NAME.XXXXXXXX.tmp`` beside it, renamed over it when complete (a
    process killed before the rename leaves that file, which the next start of the run removes). A full disk raises
    :class:`DiskFullError`."""
    _write_atomic(Path(path), text.encode())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically to ``path``. It is serialised in memory
    first, so that the only disk writes are ours (a full disk raises :class:`DiskFullError`, not torch's error)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _write_atomic(path, buffer.getbuffer())


# the first bytes of a file written by torch.save(..., _use_new_zipfile_serialization=False): its magic number
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)[:-1]


def _sniff(path: Path) -> None:
    """Refuse, with one line, a file that is plainly not a PyTorch checkpoint, before torch reads it."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFormatError(f"{path}: is empty (0 bytes), not a checkpoint (an interrupted copy?); give a "
                                    "final.pt or last.pt written by glcl_core")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PK") or head.startswith(_LEGACY_TORCH_MAGIC):
        return
    if b"\0" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            first = text.splitlines()[0].strip() if text.strip() else ""
            first = first if len(first) <= 60 else first[:57] + "..."
            raise CheckpointFormatError(f"{path}: is a text file (first line: {first!r}), not a checkpoint; give a "
                                        "final.pt or last.pt written by glcl_core")
    kind = "a Python pickle" if head[:1] == b"\x80" else "a file of another kind"
    raise CheckpointFormatError(f"{path}: is not a PyTorch checkpoint (zip archive) but {kind}; give a final.pt or "
                                "last.pt written by glcl_core")


def _torch_reason(err: Exception) -> str:
    """A short, one-line reason from torch's error, without its advice to load untrusted files unsafely."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a {found.group(1)} object, not only tensors and plain containers"
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain containers"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first.split(". ")[0][:160]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code runs).

    Raises :class:`FileNotFoundError` when ``path`` is not a file and :class:`CheckpointFormatError` (a ValueError;
    one line naming the file) when it is empty, text, a pickle that is not a PyTorch zip archive, damaged, or holds
    something other than a dict. Loading untrusted files unsafely is never suggested."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    _sniff(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, damaged, or holding objects weights_only refuses
        reason = _torch_reason(err)
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err) or "GLOBAL" in str(err):
            raise CheckpointFormatError(f"{path}: is a PyTorch file but not a glcl_core checkpoint ({reason})") \
                from None
        raise CheckpointFormatError(f"{path}: is a damaged or truncated PyTorch checkpoint ({reason})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointFormatError(f"{path}: is a PyTorch file holding a {type(ckpt).__name__}, not a glcl_core "
                                    "checkpoint (a dict: 'model' weights, or a run's 'state')")
    return ckpt


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
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, text.getvalue().encode())
