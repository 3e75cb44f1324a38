"""fetch (glcl_core.data.fetching) against a local HTTP server (127.0.0.1 only): download, resume, checksum, safe
unpacking, the cache marker, the no-network message and the CLI. Nothing here reaches any other address."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glcl_core.cli import main
from glcl_core.data import DataError, load_volumes
from glcl_core.data.archive import MARKER
from glcl_core.data.datasets import BASE_URL_ENV, DATASETS, DatasetEntry, FetchError
from glcl_core.data.fetching import fetch

TASK = "Task99_Tiny"

# ----------------------------------------------------------------------------------------------- archives


def gz_nifti(array: np.ndarray) -> bytes:
    """The bytes of a ``.nii.gz`` file (1 x 1 x 3 mm voxels)."""
    return gzip.compress(nib.Nifti1Image(array, np.diag([1.0, 1.0, 3.0, 1.0])).to_bytes(), mtime=0)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


def tiny_archive(extra=None) -> bytes:
    """A Decathlon-layout tar: Task99_Tiny/dataset.json, imagesTr/x.nii.gz, labelsTr/x.nii.gz (16 x 16 x 6), then
    whatever ``extra(tar)`` adds."""
    x, y, z = np.meshgrid(np.arange(16), np.arange(16), np.arange(6), indexing="ij")
    label = (((x - 8) ** 2 + (y - 7) ** 2) < 20).astype(np.uint8)
    image = (100 + 5 * x + 3 * y + 2 * z + 80 * label).astype(np.int16)
    meta = {"name": "Tiny", "labels": {"0": "background", "1": "blob"}, "modality": {"0": "MRI"},
            "numTraining": 1, "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
            "test": []}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_special(tar, TASK, tarfile.DIRTYPE)
        add_bytes(tar, f"{TASK}/dataset.json", json.dumps(meta).encode())
        add_bytes(tar, f"{TASK}/imagesTr/x.nii.gz", gz_nifti(image))
        add_bytes(tar, f"{TASK}/labelsTr/x.nii.gz", gz_nifti(label))
        if extra is not None:
            extra(tar)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def entry_for(data: bytes, url: str, md5sum: str | None = None) -> dict[str, DatasetEntry]:
    return {TASK: DatasetEntry(name=TASK, description="test archive", size="~10 kB", licence="CC0",
                               citation="nobody", url=url, md5=md5sum or md5(data))}


# ----------------------------------------------------------------------------------------------- the server


class Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1, honouring ``Range: bytes=N-``; ``drop_after`` (one shot)
    cuts the next response body after that many bytes; ``honour_range=False`` answers every request with 200."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.bytes_sent = 0
        self.drop_after: int | None = None
        self.honour_range = True
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                range_header = self.headers.get("Range")
                state.requests.append((self.path, range_header))
                data = state.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and state.honour_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if state.drop_after is not None:  # simulate a dropped connection mid-body
                    body, state.drop_after = body[: state.drop_after], None
                    self.close_connection = True
                self.wfile.write(body)
                state.bytes_sent += len(body)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # short poll interval: shutdown() waits for one poll
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture()
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------- tests


def test_registry_entries_are_complete():
    for name in ("Task05_Prostate", "Task02_Heart", "Task04_Hippocampus"):
        entry = DATASETS[name]
        assert entry.url.endswith(f"/{name}.tar") and re.fullmatch(r"[0-9a-f]{32}", entry.md5)
        assert entry.licence == "CC-BY-SA 4.0" and "Antonelli" in entry.citation and "1902.09063" in entry.citation
    assert "channel 0" in DATASETS["Task05_Prostate"].description
    assert not DATASETS["acdc"].downloadable


def test_clean_fetch_then_cached(server, tmp_path, capsys):
    data = tiny_archive()
    server.files["/tiny.tar"] = data
    registry = entry_for(data, server.url("/tiny.tar"))
    root = tmp_path / "cache"

    folder = fetch(TASK, root, registry=registry)
    shown = capsys.readouterr().out
    assert TASK in shown and "CC0" in shown and "nobody" in shown and server.url("/tiny.tar") in shown
    assert folder == root / TASK and (folder / "dataset.json").is_file()
    assert json.loads((folder / MARKER).read_text())["md5"] == md5(data)
    assert sorted(p.name for p in root.iterdir()) == [TASK]  # no archive, .part or temporary folder left
    volumes = load_volumes(folder)
    assert len(volumes) == 1 and volumes[0].label is not None and volumes[0].label.max() == 1

    # second call: nothing downloaded
    n_requests = len(server.requests)
    assert fetch(TASK.lower(), root, registry=registry) == folder
    assert f"already here: {folder}" in capsys.readouterr().out
    assert len(server.requests) == n_requests


def test_default_root_and_base_url(server, tmp_path, monkeypatch):
    """root defaults to $GLCL_DATA_DIR; $GLCL_FETCH_BASE_URL replaces the entry's host (a dead port here)."""
    data = tiny_archive()
    server.files[f"/mirror/{TASK}.tar"] = data
    monkeypatch.setenv("GLCL_DATA_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setenv(BASE_URL_ENV, server.url("/mirror/"))
    registry = entry_for(data, f"http://127.0.0.1:{closed_port()}/{TASK}.tar")
    assert fetch(TASK, registry=registry, quiet=True) == tmp_path / "env-cache" / TASK
    assert server.requests == [(f"/mirror/{TASK}.tar", None)]


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes(server, tmp_path, honour_range):
    data = tiny_archive()
    server.files["/tiny.tar"] = data
    server.honour_range = honour_range
    registry = entry_for(data, server.url("/tiny.tar"))
    root = tmp_path / "cache"
    cut = len(data) // 3
    server.drop_after = cut

    with pytest.raises(FetchError, match="run fetch again to resume") as err:
        fetch(TASK, root, registry=registry, quiet=True)
    assert "\n" not in str(err.value)
    part = root / f"{TASK}.tar.part"
    assert part.stat().st_size == cut

    folder = fetch(TASK, root, registry=registry, quiet=True)
    assert (folder / MARKER).is_file() and not part.exists()
    assert server.requests[-1][1] == f"bytes={cut}-"  # the second request asked for the rest
    if honour_range:
        assert server.bytes_sent == len(data) < 2 * len(data)
    else:  # the server answered 200: the file was restarted from zero and still verifies
        assert server.bytes_sent == cut + len(data)


def test_complete_partial_file_is_verified_not_downloaded_again(server, tmp_path):
    """A .part holding the whole archive (e.g. interrupted before the check): the server answers 416 to the Range."""
    data = tiny_archive()
    server.files["/tiny.tar"] = data
    root = tmp_path / "cache"
    root.mkdir()
    (root / f"{TASK}.tar.part").write_bytes(data)
    folder = fetch(TASK, root, registry=entry_for(data, server.url("/tiny.tar")), quiet=True)
    assert (folder / MARKER).is_file()
    assert server.requests == [("/tiny.tar", f"bytes={len(data)}-")] and server.bytes_sent == 0


def test_wrong_checksum_removes_partial(server, tmp_path):
    data = tiny_archive()
    server.files["/tiny.tar"] = data
    wrong = "0" * 32
    root = tmp_path / "cache"
    with pytest.raises(FetchError) as err:
        fetch(TASK, root, registry=entry_for(data, server.url("/tiny.tar"), md5sum=wrong), quiet=True)
    message = str(err.value)
    assert wrong in message and md5(data) in message and "removed" in message
    assert isinstance(err.value, DataError)
    assert list(root.iterdir()) == []  # no partial file, no archive, no folder


def unsafe_cases(outside: Path) -> dict[str, tuple]:
    """name -> (function adding the bad member(s), text the error must contain)."""
    return {
        "dotdot": (lambda tar: add_bytes(tar, "../escape", b"out"), "'../escape'"),
        "dotdot-deep": (lambda tar: add_bytes(tar, f"{TASK}/../../escape", b"out"), "path with '..'"),
        "absolute": (lambda tar: add_bytes(tar, str(outside / "abs_escape"), b"out"), "absolute path"),
        "symlink-out": (lambda tar: add_special(tar, f"{TASK}/link", tarfile.SYMTYPE, "../../escape"),
                        "outside the target folder"),
        "symlink-absolute": (lambda tar: add_special(tar, f"{TASK}/link", tarfile.SYMTYPE, str(outside)),
                             "absolute path"),
        # each link stays inside on its own; followed one after the other they leave the folder
        "symlink-chain": (lambda tar: (add_special(tar, f"{TASK}/up", tarfile.SYMTYPE, ".."),
                                       add_special(tar, f"{TASK}/out", tarfile.SYMTYPE, "up/..")),
                          "'Task99_Tiny/out'"),
        "through-symlink": (lambda tar: (add_special(tar, f"{TASK}/up", tarfile.SYMTYPE, ".."),
                                         add_bytes(tar, f"{TASK}/up/evil", b"x")), "through a symbolic link"),
        "hardlink-out": (lambda tar: add_special(tar, f"{TASK}/hard", tarfile.LNKTYPE, "../../etc/passwd"),
                         "hard link"),
        "device": (lambda tar: add_special(tar, f"{TASK}/dev", tarfile.CHRTYPE), "device"),
    }


@pytest.mark.parametrize("case", list(unsafe_cases(Path("/x"))))
def test_unsafe_archive_rejected(server, tmp_path, case):
    outside = tmp_path
    root = tmp_path / "cache"
    add_bad, expected = unsafe_cases(outside)[case]
    data = tiny_archive(add_bad)
    server.files["/bad.tar"] = data
    with pytest.raises(FetchError, match="refusing to unpack") as err:
        fetch(TASK, root, registry=entry_for(data, server.url("/bad.tar")), quiet=True)
    assert expected in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing written next to root
    assert sorted(p.name for p in root.iterdir()) == [f"{TASK}.tar"]  # the verified archive only, nothing unpacked


def test_no_network_then_archive_by_hand(tmp_path):
    data = tiny_archive()
    url = f"http://127.0.0.1:{closed_port()}/{TASK}.tar"
    registry = entry_for(data, url)
    root = tmp_path / "cache"
    with pytest.raises(FetchError) as err:
        fetch(TASK, root, registry=registry, quiet=True)
    message = str(err.value)
    archive = root / f"{TASK}.tar"
    assert "\n" not in message and url in message and str(archive) in message

    archive.write_bytes(data)  # the user follows the message; the port is still dead, so no download can happen
    folder = fetch(TASK, root, registry=registry, quiet=True)
    assert (folder / MARKER).is_file() and archive.read_bytes() == data  # the user's file is kept


def test_wrong_archive_by_hand_is_kept_and_reported(tmp_path):
    data = tiny_archive()
    archive = tmp_path / f"{TASK}.tar"
    archive.write_bytes(data[:-512])
    with pytest.raises(FetchError, match="checksum mismatch.*was kept") as err:
        fetch(TASK, tmp_path, registry=entry_for(data, f"http://127.0.0.1:{closed_port()}/x.tar"), quiet=True)
    assert md5(data) in str(err.value) and archive.is_file() and not (tmp_path / TASK).exists()


def test_folder_not_written_by_fetch_is_left_alone(tmp_path):
    data = tiny_archive()
    (tmp_path / TASK).mkdir()
    (tmp_path / TASK / "dataset.json").write_text("{}")
    with pytest.raises(FetchError, match="not unpacked by fetch"):
        fetch(TASK, tmp_path, registry=entry_for(data, f"http://127.0.0.1:{closed_port()}/x.tar"), quiet=True)
    assert (tmp_path / TASK / "dataset.json").read_text() == "{}"


def test_unknown_and_registration_only(tmp_path):
    with pytest.raises(FetchError, match="Task05_Prostate") as err:
        fetch("Task42_Nothing", tmp_path)
    assert "acdc" in str(err.value)
    with pytest.raises(FetchError, match="creatis.insa-lyon.fr/Challenge/acdc") as err:
        fetch("ACDC", tmp_path)
    assert "patientXXX" in str(err.value) and "Info.cfg" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_list_and_errors(tmp_path, capsys):
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
    assert re.search(r"^acdc .*registration required", out, re.MULTILINE)

    assert main(["fetch", "acdc", "--root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "https://www.creatis.insa-lyon.fr/Challenge/acdc/" in captured.err

    assert main(["fetch", "nope", "--root", str(tmp_path)]) == 2
    assert "Task05_Prostate" in capsys.readouterr().err
    assert main(["fetch"]) == 2
    assert "--list" in capsys.readouterr().err


def test_cli_fetch_no_network(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}/Task05_Prostate.tar"
    assert main(["fetch", "Task05_Prostate", "--root", str(tmp_path), "--url", url]) == 2
    captured = capsys.readouterr()
    assert "CC-BY-SA 4.0" in captured.out and "Antonelli" in captured.out  # the entry is shown first
    assert captured.err.count("\n") == 1 and url in captured.err
    assert str(tmp_path / "Task05_Prostate.tar") in captured.err


def test_chapter_data_parameter(tmp_path, monkeypatch):
    """A chapter's ``data`` parameter: None (the chapter's preset), a preset, a data set to fetch, a folder, a dict;
    anything else is a DataError naming the value."""
    import sys

    from glcl_core.book import chapter_setup, data_settings

    assert data_settings(None, "multicontrast") == {"embedded": "multicontrast"}
    assert data_settings("varied", "multicontrast") == {"embedded": "varied"}
    assert data_settings({"path": "x", "channel": 1}) == {"path": "x", "channel": 1}
    assert data_settings(str(tmp_path)) == {"path": str(tmp_path.resolve())}
    asked = []
    fetch_module = sys.modules["glcl_core.data.fetching"]
    monkeypatch.setattr(fetch_module, "fetch", lambda name: asked.append(name) or tmp_path / "Task05_Prostate")
    assert data_settings("task05_prostate") == {"path": str(tmp_path / "Task05_Prostate")}
    assert asked == ["task05_prostate"]
    with pytest.raises(DataError, match="'no_such_thing'.*embedded preset.*Task05_Prostate.*folder"):
        data_settings("no_such_thing")
    run = chapter_setup("ci", 0, data="varied", quiet=True)
    assert run.cfg.data.embedded == "varied" and run.data("multicontrast") == {"embedded": "varied"}
    assert chapter_setup("ci", 0, quiet=True).data("multicontrast") == {"embedded": "multicontrast"}
