"""Which code made a result: a fingerprint of glcl_core's own source, recorded in every run and grid folder's
marker, so that a folder reused after the code changed says so instead of passing old results off as new ones."""
from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path


class OtherSourceWarning(UserWarning):
    """Finished results are being reused (or a run resumed) that another version of glcl_core's code made."""


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """12 hex digits of SHA-256 over the path and bytes of every ``.py`` file of the installed glcl_core package.
    Any edit to the library changes it (a docstring too: the check errs on the side of saying so)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def warn_if_other_source(folder: str | Path, what: str) -> bool:
    """Warn (:class:`OtherSourceWarning`) when ``folder``'s marker records another source fingerprint than the code
    running now; ``what`` says what is reused, e.g. "its 12 finished cells". Folders whose marker predates the
    fingerprint (or that have none) are not judged. Returns whether it warned."""
    from glcl_core.train.run_folder import read_marker

    recorded = (read_marker(folder) or {}).get("source")
    if recorded is None or recorded == source_fingerprint():
        return False
    warnings.warn(f"{folder}: {what} were made by another version of glcl_core's code (source {recorded}, now "
                  f"{source_fingerprint()}); they are used as they are. To recompute them with this code, use a new "
                  "folder (or overwrite=True / --overwrite for a single run).", OtherSourceWarning, stacklevel=3)
    return True
