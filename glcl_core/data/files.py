"""Looking at the data folder without surprises: visible NIfTI files and folder listings, each path that cannot be
looked at a DataError naming it, and the ``errors="raise"`` / ``"skip"`` policy for a bad entry found there.

Hidden files and macOS debris (``._*``, ``__MACOSX``) are skipped everywhere. Nothing is ever written here.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from glcl_core.data.volume import DataError

ERROR_MODES = ("raise", "skip")


def is_visible(path: Path) -> bool:
    """False for hidden files, macOS resource forks (``._name``) and zip debris folders (``__MACOSX``)."""
    return not path.name.startswith(".") and path.name != "__MACOSX"


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return is_visible(path) and (name.endswith(".nii.gz") or name.endswith(".nii")) and is_file(path)


def is_file(path: Path) -> bool:
    """``path.is_file()``; DataError naming the path when it cannot be looked at (e.g. permission denied)."""
    try:
        return path.is_file()
    except OSError as err:
        raise DataError(f"{path}: cannot access ({err.strerror or err})") from err


def is_dir(path: Path) -> bool:
    """``path.is_dir()``; DataError naming the path when it cannot be looked at (e.g. permission denied)."""
    try:
        return path.is_dir()
    except OSError as err:
        raise DataError(f"{path}: cannot access ({err.strerror or err})") from err


def nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def children(folder: Path) -> list[Path]:
    """Entries of ``folder``; DataError naming it when it cannot be listed (permission denied, not a folder)."""
    try:
        return list(folder.iterdir())
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder ({err.strerror or err})") from err


def list_nifti(folder: Path) -> list[Path]:
    return sorted(p for p in children(folder) if is_nifti(p))


def visible_children(folder: Path) -> list[Path]:
    return sorted(p for p in children(folder) if is_visible(p))


def find_file(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        candidate = folder / f"{stem}{suffix}"
        if is_file(candidate):
            return candidate
    return None


def check_errors_mode(errors: str) -> None:
    if errors not in ERROR_MODES:
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")


def skip_or_raise(err: DataError, errors: str) -> None:
    """Raise ``err`` (``errors="raise"``) or warn that what it names is skipped (``errors="skip"``)."""
    if errors == "raise":
        raise err
    warnings.warn(f"skipped: {err}", stacklevel=3)
