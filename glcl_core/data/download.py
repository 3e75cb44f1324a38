"""HTTP download of one archive: streamed, resumed with a ``Range`` request after an interruption, MD5-checked.

:func:`download` streams ``url`` into a ``.part`` file and resumes after what it already holds (a server answering
200 instead of 206 restarts it from zero); every failure is a one-line :class:`FetchError` saying how to fetch the
file by hand. :func:`md5_of` gives the digest compared with the published sum.
"""
from __future__ import annotations

import hashlib
import http.client
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from glcl_core.data.datasets import FetchError

TIMEOUT_SECONDS = 30.0  # per socket operation (connect, each read), not for the whole download
CHUNK_BYTES = 1 << 20
USER_AGENT = "glcl_core-fetch"


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
