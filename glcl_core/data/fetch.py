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
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from glcl_core.data.embedded import default_root
from glcl_core.data.volume import DataError

MARKER = ".glcl_fetch.json"  # inside the final folder: written last, so its presence means "verified and complete"
BASE_URL_ENV = "GLCL_FETCH_BASE_URL"
TIMEOUT_SECONDS = 30.0  # per socket operation (connect, each read), not for the whole download
CHUNK_BYTES = 1 << 20
STALE_UNPACK_SECONDS = 3600  # temporary unpack folders older than this are leftovers of killed runs
FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
USER_AGENT = "glcl_core-fetch"


class FetchError(DataError):
    """A data set could not be fetched. The message is one line saying what to do."""


@dataclass(frozen=True)
class DatasetEntry:
    """One data set of the registry.

    Attributes:
        name: the registry key, also the folder name inside the archive and in ``root`` (``Task05_Prostate``).
        description: what it is, one line.
        size: approximate download size, as text (``"~229 MB (approx.)"``).
        licence / citation: shown before every download.
        url / md5: the archive and its published MD5; None when the data set cannot be downloaded directly.
        register: where to register, for data sets without a direct download.
        layout: what folder to pass to ``--data`` / ``load_volumes`` once the data are there.
    """

    name: str
    description: str
    size: str
    licence: str
    citation: str
    url: str | None = None
    md5: str | None = None
    register: str | None = None
    layout: str = "the task folder holding dataset.json, imagesTr/, labelsTr/"

    @property
    def downloadable(self) -> bool:
        return bool(self.url and self.md5)

    @property
    def archive_name(self) -> str:
        return f"{self.name}.tar"


MSD_LICENCE = "CC-BY-SA 4.0"
MSD_CITATION = ("Antonelli et al., The Medical Segmentation Decathlon, Nature Communications 13:4128 (2022); "
                "Simpson et al., A large annotated medical image dataset for the development and evaluation of "
                "segmentation algorithms, arXiv:1902.09063 (2019)")

# URLs and MD5s: MONAI, monai/apps/datasets.py, DecathlonDataset.resource and DecathlonDataset.md5 (read at
# Project-MONAI/MONAI commit d388d1c6fec8cb3a0eebee5b5a0b9776ca59ca83, 2025-06-13; unchanged since at least
# 01eebcf3). Sizes are approximate and were not checked against the server (no network where this was written);
# case counts from the MSD paper (Simpson et al. 2019).
DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            name="Task05_Prostate",
            description="MSD prostate MRI (the GLCL paper's set): 32 labelled T2+ADC volumes (T2 is channel 0), "
                        "peripheral and transition zones",
            size="~229 MB (approx.)", licence=MSD_LICENCE, citation=MSD_CITATION,
            url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task05_Prostate.tar",
            md5="35138f08b1efaef89d7424d2bcc928db",
            layout="the task folder holding dataset.json, imagesTr/, labelsTr/ (use channel 0 = T2)",
        ),
        DatasetEntry(
            name="Task02_Heart",
            description="MSD cardiac MRI: 20 labelled mono-modal volumes, left atrium",
            size="~435 MB (approx.)", licence=MSD_LICENCE, citation=MSD_CITATION,
            url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task02_Heart.tar",
            md5="06ee59366e1e5124267b774dbd654057",
        ),
        DatasetEntry(
            name="Task04_Hippocampus",
            description="MSD brain MRI crops: 263 labelled small volumes, hippocampus head and body",
            size="~27 MB (approx.)", licence=MSD_LICENCE, citation=MSD_CITATION,
            url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar",
            md5="9d24dba78a72977dbd1d2e110310f31b",
        ),
        DatasetEntry(
            name="acdc",
            description="ACDC cine cardiac MRI: 100 training + 50 test patients, ED/ES frames labelled "
                        "(RV, myocardium, LV)",
            size="-", licence="registration required (terms on the challenge page)",
            citation="Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-structures "
                     "Segmentation and Diagnosis: Is the Problem Solved?, IEEE TMI 37(11):2514-2525 (2018)",
            register="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
            layout="the folder holding patientXXX/ (e.g. training/patient001/ with patient001_frameYY.nii.gz, "
                   "patient001_frameYY_gt.nii.gz and Info.cfg; up to three folders down)",
        ),
    )
}


# ----------------------------------------------------------------------------------------------- registry


def lookup(name: str, registry: Mapping[str, DatasetEntry] | None = None) -> DatasetEntry:
    """The entry called ``name`` (case-insensitive) in ``registry`` (added to / overriding :data:`DATASETS`)."""
    known = {**DATASETS, **(registry or {})}
    by_lower = {key.lower(): entry for key, entry in known.items()}
    entry = by_lower.get(str(name).strip().lower())
    if entry is None:
        raise FetchError(f"unknown data set {name!r}; known: {', '.join(known)}")
    return entry


def datasets_table(registry: Mapping[str, DatasetEntry] | None = None) -> str:
    """A text table of the known data sets: name, size, licence, what it is."""
    rows = [("name", "size", "licence", "what it is")]
    rows += [(e.name, e.size, "registration required" if e.register else e.licence, e.description)
             for e in {**DATASETS, **(registry or {})}.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows)


def registration_message(entry: DatasetEntry) -> str:
    return (f"{entry.name} cannot be downloaded automatically: register at {entry.register}, download it there, "
            f"unpack it anywhere and pass {entry.layout} to --data (or load_volumes)")


def describe(entry: DatasetEntry, url: str) -> str:
    """What is about to be downloaded: shown before every download."""
    return "\n".join([
        f"data set : {entry.name} - {entry.description}",
        f"size     : {entry.size}",
        f"licence  : {entry.licence}",
        f"cite     : {entry.citation}",
        f"from     : {url}",
    ])


def source_url(entry: DatasetEntry, url: str | None = None) -> str:
    """``url`` if given, else ``$GLCL_FETCH_BASE_URL/<archive>`` if set, else the entry's own URL."""
    if url:
        return url
    base = os.environ.get(BASE_URL_ENV)
    if base:
        return f"{base.rstrip('/')}/{entry.archive_name}"
    assert entry.url is not None
    return entry.url


# ----------------------------------------------------------------------------------------------- fetch


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


def is_fetched(folder: Path, entry: DatasetEntry) -> bool:
    """True when ``folder`` holds the marker of a verified unpack of ``entry``'s archive."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("name") == entry.name and marker.get("md5") == entry.md5


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check against the published sums, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- download


def download(url: str, part: Path, archive: Path, *, quiet: bool = False) -> None:
    """Stream ``url`` into ``part``, resuming after what ``part`` already holds.

    ``archive`` is only named in the messages: where a file fetched by hand should go.
    """
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    manual = f"download {url} by hand and save it as {archive}, then run fetch again"
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"{url}: only http:// and https:// addresses are fetched; {manual}")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)  # noqa: S310 (scheme checked above)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the partial file is complete (checked by MD5 next)
            return
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}; {manual}") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise FetchError(f"cannot reach {url} ({reason}); {manual}") from err
    with response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        if have and response.status == 206 and content_range_start(response.headers.get("Content-Range")) == have:
            mode = "ab"
        else:  # 200 (the server ignored the Range) or an unexpected range: start again from zero
            mode, have = "wb", 0
        expected = have + total if total is not None else None
        written = have
        bar = tqdm(total=expected, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=archive.name,
                   disable=quiet or not sys.stderr.isatty(), leave=False)
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        block = response.read(CHUNK_BYTES)
                    except (http.client.HTTPException, OSError) as err:
                        raise Interrupted(err) from err
                    if not block:
                        break
                    out.write(block)
                    written += len(block)
                    bar.update(len(block))
        except Interrupted as stop:  # connection dropped, timeout, IncompleteRead (not a local write error)
            err = stop.__cause__
            raise FetchError(f"download of {url} interrupted after {written} bytes ({type(err).__name__}); the "
                             f"partial file {part} is kept: run fetch again to resume, or {manual}") from err
        finally:
            bar.close()
    if expected is not None and written < expected:
        raise FetchError(f"download of {url} stopped after {written} of {expected} bytes; the partial file {part} "
                         f"is kept: run fetch again to resume")


class Interrupted(Exception):
    """The connection failed while reading the body (wraps the error; internal to :func:`download`)."""


def content_range_start(header: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes START-END/TOTAL`` header, None when absent or unreadable."""
    match = re.match(r"\s*bytes\s+(\d+)-", header or "")
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------------------------- unpack


def unsafe_member(member: tarfile.TarInfo, symlinks: set[str]) -> str | None:
    """Why ``member`` must not be extracted, or None when it is safe.

    Paths are resolved lexically inside the archive root; ``symlinks`` (every symlink member's normalised name)
    forbids walking through a link, so the lexical resolution is the one the file system would make.
    """
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "path with '..'"
    if member.isdev():
        return "device or FIFO file"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return f"unsupported member type {member.type!r}"
    if resolve_inside(name, symlinks, follow_last=False) is None:
        return "path through a symbolic link"
    if member.issym():
        target = member.linkname
        if target.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", target):
            return f"symbolic link to the absolute path {target!r}"
        if resolve_inside(posixpath.join(posixpath.dirname(name), target), symlinks) is None:
            return f"symbolic link to {target!r}, outside the target folder or through another link"
    if member.islnk():  # hard link targets are archive paths
        target = member.linkname
        if target.startswith(("/", "\\")) or resolve_inside(target, symlinks) is None:
            return f"hard link to {target!r}, outside the target folder or through a symbolic link"
    return None


def resolve_inside(path: str, symlinks: set[str], follow_last: bool = True) -> str | None:
    """``path`` normalised relative to the archive root, None if it leaves the root or passes through a symlink
    (the last component may be one when ``follow_last`` is False)."""
    parts: list[str] = []
    components = [c for c in path.replace("\\", "/").split("/") if c not in ("", ".")]
    for i, component in enumerate(components):
        if component == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(component)
        last = i == len(components) - 1
        if "/".join(parts) in symlinks and not (last and not follow_last):
            return None
    return "/".join(parts)


def check_archive(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Every member, after checking all of them (FetchError naming the first unsafe one)."""
    members = tar.getmembers()
    symlinks = {resolve_inside(m.name, set()) or m.name for m in members if m.issym()}
    for member in members:
        reason = unsafe_member(member, symlinks)
        if reason is not None:
            raise FetchError(f"{archive}: refusing to unpack: unsafe member {member.name!r} ({reason}); "
                             f"nothing was unpacked")
    return members


def unpack(archive: Path, base: Path, entry: DatasetEntry) -> Path:
    """Unpack the verified ``archive`` into ``base / entry.name`` atomically; return that folder."""
    final = base / entry.name
    for leftover in base.glob(f".{entry.name}.unpacking-*"):  # from a killed process (old enough not to be running)
        try:
            if time.time() - leftover.stat().st_mtime > STALE_UNPACK_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass
    building = Path(tempfile.mkdtemp(prefix=f".{entry.name}.unpacking-", dir=base))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = check_archive(tar, archive)
                # The data filter (Python 3.10.12+/3.11.4+) repeats the same checks at extraction time.
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(building, members=members, **extra)
        except FILTER_ERRORS as err:  # the data filter disagreed with our checks: still unsafe
            raise FetchError(f"{archive}: refusing to unpack ({err}); nothing was unpacked") from err
        except (tarfile.TarError, EOFError) as err:
            raise FetchError(f"{archive}: not a readable tar archive ({err}); delete it and fetch again") from err
        unpacked = building / entry.name
        if not (unpacked / "dataset.json").is_file():
            raise FetchError(f"{archive}: does not hold {entry.name}/dataset.json; nothing was unpacked")
        (unpacked / MARKER).write_text(json.dumps({
            "name": entry.name, "md5": entry.md5, "url": entry.url,
            "unpacked": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=1), encoding="utf-8")
        try:
            os.replace(unpacked, final)  # atomic: readers see the complete folder or none
        except OSError:
            if not is_fetched(final, entry):  # not a concurrent fetch's finished copy: a real error
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final
