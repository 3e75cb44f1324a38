"""Download public data sets into the data cache: streamed, resumable, checksum-verified, safely unpacked.

``fetch("Task05_Prostate")`` (or ``python -m glcl_core fetch Task05_Prostate``) returns the Decathlon task folder
that :func:`glcl_core.data.load_volumes` reads::

    <root>/Task05_Prostate/
        dataset.json
        imagesTr/  labelsTr/  imagesTs/
        .glcl_fetch.json        # written by fetch after a verified unpack (hidden: the loader skips it)

``root`` defaults to ``$GLCL_DATA_DIR``, else the cache folder of the embedded data set
(:func:`glcl_core.data.embedded.default_root`). What happens, in order:

1. A folder with a matching ``.glcl_fetch.json`` is already there: nothing is downloaded ("already here").
2. The archive is already at ``<root>/<Task>.tar`` (e.g. downloaded by hand): it is verified and unpacked.
3. Otherwise it is streamed to ``<root>/<Task>.tar.part``; after an interruption the next call resumes with an
   HTTP ``Range`` request (a server that answers 200 instead of 206 restarts from zero). A wrong MD5 deletes the
   partial file.
4. Every member of the verified archive is checked before anything is written (no absolute paths, no ``..``, no
   links leading out, no device files); it is unpacked into a temporary folder inside ``root`` and renamed into
   place, so the task folder appears complete or not at all. The archive is then deleted.

Where the data come from: :data:`DATASETS`. Another address (a mirror, a local server in tests): ``url=`` for one
call, or ``$GLCL_FETCH_BASE_URL`` (the archive is then fetched from ``$GLCL_FETCH_BASE_URL/<Task>.tar``); the
published MD5 is checked either way. ``registry=`` adds or replaces entries (e.g. a private data set).

Every problem raises :class:`FetchError` (a :class:`~glcl_core.data.DataError`) with a one-line message.

The pieces: the registry in :mod:`glcl_core.data.datasets`, the HTTP download in :mod:`glcl_core.data.download`,
the checked unpacking and the marker in :mod:`glcl_core.data.archive`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from glcl_core.data.archive import MARKER, is_fetched, unpack
from glcl_core.data.datasets import DatasetEntry, FetchError, describe, lookup, registration_message, source_url
from glcl_core.data.download import download, md5_of
from glcl_core.data.embedded import default_root


def fetch(name: str, root: str | os.PathLike | None = None, *, quiet: bool = False, url: str | None = None,
          registry: Mapping[str, DatasetEntry] | None = None) -> Path:
    """Download, verify and unpack a public data set; return the folder :func:`load_volumes` reads.

    Args:
        name: a key of :data:`DATASETS` (case-insensitive), e.g. ``"Task05_Prostate"``.
        root: cache folder (default ``$GLCL_DATA_DIR``, else :func:`~glcl_core.data.embedded.default_root`).
        quiet: print nothing (no description, no progress bar).
        url: download from this address instead (a mirror; tests use a local server). The MD5 is still checked.
        registry: extra entries, or replacements for entries of :data:`DATASETS`, by name.
    Returns:
        ``<root>/<name>``, the task folder holding ``dataset.json``, ``imagesTr/``, ``labelsTr/``.
    Raises:
        FetchError: unknown name, registration-only data set, no network (the message says which URL to fetch by
        hand and the exact path to save it at; the next call then uses that file), checksum mismatch, unsafe
        archive, or a folder in the way that fetch did not write.
    """
    entry = lookup(name, registry)
    if not entry.downloadable:
        raise FetchError(registration_message(entry))
    say = (lambda *_: None) if quiet else print
    base = Path(root).expanduser() if root is not None else default_root()
    final = base / entry.name
    if is_fetched(final, entry):
        say(f"already here: {final}")
        return final
    if final.exists():  # never delete a folder fetch did not write (e.g. a copy unpacked by hand)
        raise FetchError(f"{final} exists but was not unpacked by fetch (no valid {MARKER}): pass it to --data as "
                         f"it is, or delete it and fetch again")
    base.mkdir(parents=True, exist_ok=True)
    archive = base / entry.archive_name
    by_hand = archive.is_file()
    if by_hand:  # downloaded by hand (or verified before an interrupted unpack)
        say(describe(entry, f"{archive} (found on disk)"))
        got = md5_of(archive)
        if got != entry.md5:
            raise FetchError(f"{archive}: checksum mismatch: expected MD5 {entry.md5}, got {got}; the file was "
                             f"kept: remove or replace it and fetch again")
    else:
        address = source_url(entry, url)
        say(describe(entry, address))
        part = base / f"{entry.archive_name}.part"
        download(address, part, archive, quiet=quiet)
        got = md5_of(part)
        if got != entry.md5:
            part.unlink(missing_ok=True)
            raise FetchError(f"{address}: checksum mismatch: expected MD5 {entry.md5}, got {got}; the partial file "
                             f"{part} was removed, fetch again")
        os.replace(part, archive)
    unpack(archive, base, entry)
    if by_hand:  # the user's file: kept
        say(f"unpacked: {final} (the archive {archive} was kept; delete it to free the space)")
    else:
        archive.unlink(missing_ok=True)  # our download, now unpacked and verified: it only takes space
        say(f"unpacked: {final}")
    return final
