"""Run folders: the ``.glcl_run.json`` marker and the rules for which folders are written, resumed or replaced,
with orphan temporary files removed; the folder's lock is :mod:`glcl_core.train.lock`.

A run folder is marked as glcl_core's by ``.glcl_run.json`` (project, stage, creation time), written when the folder
is prepared. Rules (:func:`prepare_run_dir`):

* glcl_core never writes into a non-empty folder without the marker (a user's folder), except to resume a run made
  before the marker existed (``config.json`` and a checkpoint), which it then marks.
* ``overwrite=True`` replaces a marked run only, and deletes only the files a run writes (:data:`OWN_FILES` and
  the temporary files of atomic writes). A marked folder that also holds other files is refused, with the list,
  rather than half cleaned; an unmarked older run is refused too (delete it by hand).
* While a process writes a run folder it holds the folder's lock (:mod:`glcl_core.train.lock`); a second process
  gets :class:`~glcl_core.train.lock.RunLockedError`. Temporary files of killed atomic writes are removed at the
  next start of the run, under the lock. A fresh run that fails before its first checkpoint removes the marker and
  ``config.json`` it wrote (and the folder, if it made it), so the retry starts cleanly.

Files are written atomically (:func:`glcl_core.train.checkpoint.atomic_write_text`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from glcl_core.provenance import warn_if_other_source
from glcl_core.train.checkpoint import atomic_write_text, resumed_step
from glcl_core.train.config import RUNTIME_PARTS, RunConfig


class RunExistsError(FileExistsError):
    """The run folder already holds a run and neither ``resume`` nor ``overwrite`` was asked for (or the folder may
    not be replaced: see :func:`prepare_run_dir`)."""


class NotARunFolderError(RunExistsError):
    """The folder is not empty and glcl_core did not make it (no marker): nothing is written there."""


# What glcl_core writes in a run folder: the only files ``overwrite=True`` deletes.
MARKER_NAME = ".glcl_run.json"
RUN_FILES = ("config.json", "last.pt", "final.pt", "history.csv", "metrics.csv")
# files that hold results: a folder with any of them holds a run (a marker and a config alone do not)
RESULT_FILES = ("last.pt", "final.pt", "history.csv", "metrics.csv")
OWN_FILES = (MARKER_NAME, *RUN_FILES)


def _is_temp(name: str) -> bool:
    """A temporary file of an atomic write of ours (``.NAME.XXXXXXXX.tmp``, see :func:`atomic_write_text`) or a
    lock's takeover guard."""
    from glcl_core.train.lock import LOCK_NAME, TAKEOVER_NAME

    if name in (LOCK_NAME, TAKEOVER_NAME):
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{own}.") for own in (*OWN_FILES, "experiment.json",
                                                                                      "results.csv"))


def read_marker(folder: str | Path) -> dict | None:
    """The run-folder marker ``.glcl_run.json`` (project, stage, created), or None when the folder has none."""
    path = Path(folder) / MARKER_NAME
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("project") == "glcl_core" else None


def write_marker(folder: Path, stage: str | None, **extra: Any) -> None:
    from glcl_core import __version__
    from glcl_core.provenance import source_fingerprint

    marker = {"project": "glcl_core", "stage": stage, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "version": __version__, "source": source_fingerprint(), **extra}
    atomic_write_text(folder / MARKER_NAME, json.dumps(marker, indent=2) + "\n")


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _is_legacy_run(folder: Path) -> bool:
    """A run folder written before the marker existed: one of our ``config.json`` files, and a checkpoint of ours
    or nothing but the files a run writes (e.g. a grid cell kept as text: ``config.json`` and ``history.csv``)."""
    try:
        data = json.loads((folder / "config.json").read_text())
        RunConfig.from_dict(data)
    except Exception:  # missing, unreadable or not one of our configs
        return False
    if not {"model", "global_", "local", "finetune"} <= set(data):
        return False
    if (folder / "last.pt").is_file() or (folder / "final.pt").is_file():
        return True
    return all(name in OWN_FILES or _is_temp(name) for name in _entries(folder))


def folder_kind(folder: str | Path) -> str:
    """What a folder is to glcl_core: ``"new"`` (missing, empty, or only our lock/temporary files), ``"marked"``
    (made by glcl_core: it holds the marker), ``"legacy"`` (a run made before the marker existed: our
    ``config.json`` with a checkpoint or only a run's files), ``"foreign"`` (anything else that is not empty) or
    ``"file"`` (not a folder)."""
    folder = Path(folder)
    if not folder.exists():
        return "new"
    if not folder.is_dir():
        return "file"
    if read_marker(folder) is not None:
        return "marked"
    if _is_legacy_run(folder):
        return "legacy"
    if all(_is_temp(name) for name in _entries(folder)):
        return "new"
    return "foreign"


def has_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run of glcl_core (marked, with results: a checkpoint or a history; or an older
    unmarked run), which ``resume=True`` continues and a fresh run refuses to replace."""
    folder = Path(folder)
    kind = folder_kind(folder)
    return kind == "legacy" or (kind == "marked" and any((folder / f).exists() for f in RESULT_FILES))


def _foreign_error(folder: Path, kind: str, overwrite: bool) -> NotARunFolderError:
    if kind == "file":
        return NotARunFolderError(f"{folder} is a file, not a run folder; choose another output path")
    listed = ", ".join(_entries(folder)[:5]) + (", ..." if len(_entries(folder)) > 5 else "")
    also = " (--overwrite only replaces folders glcl_core made)" if overwrite else ""
    return NotARunFolderError(
        f"{folder} is not empty and is not a glcl_core run folder (no {MARKER_NAME}; it holds {listed}): "
        f"nothing was written there{also}; choose a new or empty folder")


class RunFolder:
    """A prepared run folder whose lock this process holds (see :func:`open_run_dir`).

    ``fresh``: the run starts from scratch (new or emptied folder); ``created_dir``: this call made the folder.
    :meth:`close` releases the lock; after a failure it removes what a fresh start wrote (marker, config), so a
    run that failed before its first checkpoint leaves no half run folder behind."""

    def __init__(self, path: Path, lock, fresh: bool, created_dir: bool):
        self.path, self.lock, self.fresh, self.created_dir = path, lock, fresh, created_dir

    def close(self, failed: bool = False) -> None:
        try:
            if failed and self.fresh and not any((self.path / f).exists() for f in RESULT_FILES):
                remove_temporary_files(self.path)
                for name in (MARKER_NAME, "config.json"):
                    (self.path / name).unlink(missing_ok=True)
        finally:
            self.lock.release()
        if failed and self.fresh and self.created_dir:
            try:
                self.path.rmdir()  # only when empty: nothing but what this call wrote was there
            except OSError:
                pass

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(failed=exc_type is not None)
        return False


def remove_temporary_files(folder: Path) -> list[str]:
    """Delete the temporary files of atomic writes killed before their rename (``.last.pt.XXXX.tmp``...).
    Call only while holding the folder's lock (a running writer's temporary file is not an orphan)."""
    from glcl_core.train.lock import LOCK_NAME, TAKEOVER_NAME

    removed = []
    for path in folder.iterdir():
        if path.name not in (LOCK_NAME, TAKEOVER_NAME) and _is_temp(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def prepare_run_dir(out: str | Path, cfg: RunConfig, resume: bool = False, overwrite: bool = False,
                    stage: str | None = None) -> Path:
    """Create or reopen a run folder and write ``config.json`` (and the marker ``.glcl_run.json``).

    ``resume=True`` reopens a run whose saved config equals ``cfg`` (the iteration count may grow; a finished run
    is not resumed with fewer iterations); without an earlier run it starts fresh. ``overwrite=True`` replaces a
    run that glcl_core made (marked folder; only its own files are deleted, and a folder that also holds other
    files is refused). A folder that is not empty and not a run of glcl_core is never written to. Otherwise an
    existing run raises ``RunExistsError``. The folder is locked while it is prepared; to keep it locked while a
    run writes it, use :func:`open_run_dir`.
    """
    opened = open_run_dir(out, cfg, resume=resume, overwrite=overwrite, stage=stage)
    opened.close()
    return opened.path


def open_run_dir(out: str | Path, cfg: RunConfig, resume: bool = False, overwrite: bool = False,
                 stage: str | None = None) -> RunFolder:
    """:func:`prepare_run_dir`, returning the :class:`RunFolder` with its lock held (release with ``close()`` or
    a ``with`` block). Raises :class:`~glcl_core.train.lock.RunLockedError` when another process holds it."""
    from glcl_core.train.lock import FolderLock

    out = Path(out)
    kind = folder_kind(out)
    if kind in ("foreign", "file"):  # refused before anything is written there
        raise _foreign_error(out, kind, overwrite)
    created_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out).acquire()
    try:
        fresh = _prepare_locked(out, cfg, resume, overwrite, stage)
    except BaseException:
        lock.release()
        if created_dir:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    return RunFolder(out, lock, fresh, created_dir)


def _prepare_locked(out: Path, cfg: RunConfig, resume: bool, overwrite: bool, stage: str | None) -> bool:
    """The checks and writes of :func:`prepare_run_dir`, under the folder's lock; True when the run starts fresh."""
    kind = folder_kind(out)  # again, under the lock
    if kind in ("foreign", "file"):
        raise _foreign_error(out, kind, overwrite)
    config_file = out / "config.json"
    marked_stage = (read_marker(out) or {}).get("stage")
    if marked_stage == "experiment" and stage != "experiment":
        raise NotARunFolderError(f"{out} is the grid folder of an experiment, not a run folder; choose another folder")
    holds_run = has_run(out)
    if kind == "marked" and not holds_run:
        # a marked folder without results: a run that stopped before its first checkpoint (a retry starts it
        # again), unless someone else's files were put there
        unknown = [n for n in _entries(out) if n not in OWN_FILES and not _is_temp(n)]
        if unknown:
            raise RunExistsError(f"{out} holds files glcl_core did not write ({', '.join(unknown[:5])}); "
                                 "choose a new or empty folder")
    if holds_run and resume:
        _check_resume(out, cfg, stage, kind)
        checkpointed = (out / "last.pt").is_file() or (out / "final.pt").is_file()
        if checkpointed:
            warn_if_other_source(out, "the run's checkpoints")
        remove_temporary_files(out)
        if kind == "legacy":  # adopt an older run folder: it is ours (our config, a checkpoint or a run's files)
            write_marker(out, stage, adopted=True, source=None)  # which code made it is not known
        elif not checkpointed:  # only a history: the run starts again from step 0, with this code
            write_marker(out, stage)
        atomic_write_text(config_file, _json(cfg))
        return False
    if holds_run and overwrite:
        _clear_for_overwrite(out, kind)
    elif holds_run:
        raise RunExistsError(f"{out} already holds a run; pass resume=True or overwrite=True "
                             "(command line: --resume or --overwrite)")
    remove_temporary_files(out)
    if kind == "marked":  # a marked folder without results: its marker and config are replaced
        config_file.unlink(missing_ok=True)
    write_marker(out, stage)
    atomic_write_text(config_file, _json(cfg))
    return True


def _clear_for_overwrite(out: Path, kind: str) -> None:
    """Delete the files glcl_core wrote in ``out``; refuse an unmarked run or a folder with other files."""
    if kind != "marked":
        raise RunExistsError(
            f"{out} holds a run made before glcl_core marked its run folders (no {MARKER_NAME}), so --overwrite "
            "does not delete it; delete the folder by hand, or continue it with --resume")
    unknown = [n for n in _entries(out) if n not in OWN_FILES and not _is_temp(n)]
    if unknown:
        raise RunExistsError(
            f"{out} also holds files glcl_core did not write ({', '.join(unknown[:5])}"
            f"{', ...' if len(unknown) > 5 else ''}); --overwrite deletes only a run's own files and left "
            "everything as it was: move those files away, or delete the folder by hand")
    for name in OWN_FILES:
        (out / name).unlink(missing_ok=True)
    remove_temporary_files(out)


_STAGE_PART = {"global": "global_", "local": "local", "finetune": "finetune"}


def _check_resume(out: Path, cfg: RunConfig, stage: str | None, kind: str) -> None:
    """Refuse to resume a run of another stage, of another configuration, or with fewer iterations than it ran."""
    config_file = out / "config.json"
    marker = read_marker(out) or {}
    if stage and marker.get("stage") and marker["stage"] != stage:
        raise ValueError(f"{out}: cannot resume, this folder holds a {marker['stage']} run, not a {stage} run")
    if not config_file.is_file():
        raise ValueError(f"{out}: cannot resume, the run has no config.json; use a new folder or overwrite")
    saved = RunConfig.from_json(config_file).to_dict()
    wanted = cfg.to_dict()
    diffs = config_differences(comparable(saved), comparable(wanted))
    if diffs:
        shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
        raise ValueError(f"{config_file}: cannot resume, the saved configuration differs from this one ({shown}); "
                         "use a new --out, or --overwrite to start again")
    parts = [_STAGE_PART[stage]] if stage in _STAGE_PART else list(_STAGE_PART.values())
    for part in parts:
        old, new = saved[part].get("iterations"), wanted[part].get("iterations")
        if old is None or new is None or new >= old:
            continue
        if (out / "final.pt").exists():
            raise ValueError(f"{out}: cannot resume, the run finished {old} {part.rstrip('_')} iterations and this "
                             f"one asks for {new} (fewer); use a new --out, or --overwrite to start again")
        reached = resumed_step(out) if (out / "last.pt").exists() else 0
        if reached > new:
            raise ValueError(f"{out}: cannot resume, the run has reached step {reached} and this one asks for "
                             f"{new} iterations (fewer); use a new --out, or --overwrite to start again")


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every setting that differs (nested keys joined by dots)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{name}.")
        elif _plain(a) != _plain(b):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value)) if isinstance(value, (list, tuple, dict)) else value


def comparable(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict without what may change when a run resumes: iteration counts and speed settings."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items() if k not in RUNTIME_PARTS}
    for part in ("global_", "local", "finetune"):
        d[part].pop("iterations", None)
    return d


def _json(cfg: RunConfig) -> str:
    import json

    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
