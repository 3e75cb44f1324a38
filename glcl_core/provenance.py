"""Which code made a result: a fingerprint of glcl_core's own source, recorded in every run and grid folder's
marker, so that a folder reused after the code changed says so instead of passing old results off as new ones."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Iterable


class OtherSourceWarning(UserWarning):
    """Finished results are being reused (or a run resumed) that another version of glcl_core's code made."""


def _fingerprint() -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        text = path.read_bytes().replace(b"\r\n", b"\n")  # the same commit checked out with CRLF endings
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + text + b"\0")
    return digest.hexdigest()[:12]


# taken once, when glcl_core is imported: the code this process runs (an edit made later takes effect, and is
# fingerprinted, only after a restart, e.g. of the notebook's kernel)
_SOURCE = _fingerprint()


def source_fingerprint() -> str:
    """12 hex digits of SHA-256 over the path and text of every ``.py`` file of the glcl_core package this process
    imported. Any edit to the library changes it (a docstring too: the check errs on the side of saying so)."""
    return _SOURCE


def other_sources(folders: Iterable[str | Path]) -> dict[str, int]:
    """``{fingerprint: count}`` of the folders whose marker records another source than this process's code.
    Folders without a marker or whose marker predates the fingerprint (or was adopted from an older run) are not
    judged."""
    from glcl_core.train.run_folder import read_marker

    found: dict[str, int] = {}
    for folder in folders:
        recorded = (read_marker(folder) or {}).get("source")
        if recorded is not None and recorded != _SOURCE:
            found[recorded] = found.get(recorded, 0) + 1
    return found


def warn_if_other_source(folder: str | Path, what: str, parts: Iterable[str | Path] | None = None) -> bool:
    """Warn (:class:`OtherSourceWarning`) when another version of the code made ``folder`` (its marker), or, with
    ``parts``, any of those folders (e.g. a grid's finished cells); ``what`` names what is reused, e.g. "its 12
    finished cells". Returns whether it warned."""
    found = other_sources(parts if parts is not None else [folder])
    if not found:
        return False
    sources = ", ".join(f"{source} ({n})" if parts is not None else source for source, n in sorted(found.items()))
    share = f"{sum(found.values())} of " if parts is not None else ""
    warnings.warn(f"{folder}: {share}{what} were made by another version of glcl_core's code (source {sources}, now "
                  f"{_SOURCE}); they are used as they are. To recompute them with this code, use a new folder (or "
                  "overwrite=True / --overwrite for a single run).", OtherSourceWarning, stacklevel=2)
    return True
