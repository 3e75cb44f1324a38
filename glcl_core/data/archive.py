"""Safe, atomic unpacking of a verified archive, and the marker that says a folder was unpacked by fetch.

Every member of the archive is checked before anything is written (no absolute paths, no ``..``, no links leading
out, no device files); it is unpacked into a temporary folder inside ``root`` and renamed into place, so the task
folder appears complete or not at all. The marker file (:data:`MARKER`) is written last, inside the final folder.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from glcl_core.data.datasets import DatasetEntry, FetchError

MARKER = ".glcl_fetch.json"  # inside the final folder: written last, so its presence means "verified and complete"
STALE_UNPACK_SECONDS = 3600  # temporary unpack folders older than this are leftovers of killed runs
FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def is_fetched(folder: Path, entry: DatasetEntry) -> bool:
    """True when ``folder`` holds the marker of a verified unpack of ``entry``'s archive."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("name") == entry.name and marker.get("md5") == entry.md5


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
