"""An advisory lock on a folder: one process writes a run folder (or a grid folder) at a time.

The lock is a file, ``.glcl_run.lock``, created with ``O_CREAT | O_EXCL`` (atomic: of two processes, one creates it
and the other finds it) and holding the owner's pid, host name and a random token. It is removed when the owner
releases it (``with`` block or :meth:`FolderLock.release`, also on exceptions and Ctrl-C). A process killed hard
(SIGKILL, power loss) leaves the file behind: a lock whose pid no longer runs on this host is stale and the next
process takes it over, with a warning. A lock held on another host (a shared disk) cannot be checked from here:
it is refused, and the message says which file to delete if that process is gone.

Takeover is guarded by a second ``O_EXCL`` file (``.glcl_run.lock.takeover``), so two processes that find the same
stale lock do not both take it over.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".glcl_run.lock"
TAKEOVER_NAME = LOCK_NAME + ".takeover"
# a lock file without readable content older than this is a leftover (its owner writes the content right after
# creating the file); a takeover guard older than this belongs to a killed process
UNREADABLE_STALE_SECONDS = 30.0


class RunLockedError(RuntimeError):
    """Another process (``pid`` on ``host``) holds the folder's lock."""

    def __init__(self, message: str, path: Path | None = None, pid: int | None = None, host: str | None = None):
        super().__init__(message)
        self.path, self.pid, self.host = path, pid, host

    def __reduce__(self):  # pickled intact (torchrun sends rank 0's errors to the other ranks)
        return (type(self), (str(self), self.path, self.pid, self.host))


def _host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def read_lock(path: Path) -> dict | None:
    """The lock file's content, or None when it is missing, empty or unreadable."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


class FolderLock:
    """The lock of one folder, held by this process; release it with :meth:`release` or a ``with`` block."""

    def __init__(self, folder: str | Path, what: str = "run folder"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.token = uuid.uuid4().hex
        self.held = False

    # ------------------------------------------------------------------------------------------------ acquire
    def acquire(self) -> "FolderLock":
        """Take the lock or raise :class:`RunLockedError`; a stale lock of this host is taken over."""
        if self.held:
            return self
        for _ in range(3):
            if self._create():
                return self
            info = read_lock(self.path)
            if info is None and not self.path.exists():
                continue  # released meanwhile: try again
            if not self._stale(info):
                raise self._locked_error(info)
            with self._takeover_guard(info):
                if not self.path.exists():
                    continue
                if (read_lock(self.path) or {}).get("token") != (info or {}).get("token"):
                    continue  # taken over by another process meanwhile: look again
                owner = (f"pid {info['pid']} on {info.get('host')}" if info and "pid" in info
                         else "an unknown process")
                print(f"warning: {self.path}: taking over a stale lock of {owner}, which no longer runs",
                      file=sys.stderr, flush=True)
                self.path.unlink(missing_ok=True)
                if self._create():
                    return self
        raise self._locked_error(read_lock(self.path))

    def _create(self) -> bool:
        content = json.dumps({"pid": os.getpid(), "host": _host(), "token": self.token,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[:8]})
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)
        self.held = True
        return True

    def _stale(self, info: dict | None) -> bool:
        if info is None:  # no content: stale only when old (its creator writes the content at once)
            try:
                return time.time() - self.path.stat().st_mtime > UNREADABLE_STALE_SECONDS
            except FileNotFoundError:
                return True
        if info.get("host") != _host():
            return False  # cannot check a process on another machine
        try:
            pid = int(info.get("pid"))
        except (TypeError, ValueError):
            return False
        return not pid_alive(pid)

    @contextlib.contextmanager
    def _takeover_guard(self, info: dict | None) -> Iterator[None]:
        """Only one process at a time takes over a stale lock."""
        guard = self.folder / TAKEOVER_NAME
        for _ in range(2):
            try:
                os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                break
            except FileExistsError:
                try:  # a guard left by a process killed during its takeover
                    if time.time() - guard.stat().st_mtime <= UNREADABLE_STALE_SECONDS:
                        raise self._locked_error(info) from None
                    guard.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
        else:
            raise self._locked_error(info)
        try:
            yield
        finally:
            guard.unlink(missing_ok=True)

    def _locked_error(self, info: dict | None) -> RunLockedError:
        if info is None:
            return RunLockedError(
                f"{self.folder}: another process is writing this {self.what} (lock file {self.path}); wait for it, "
                f"or delete {self.path} if no glcl_core process uses this folder", self.path)
        pid, host = info.get("pid"), info.get("host")
        who = "this process" if pid == os.getpid() and host == _host() else f"pid {pid} on {host}"
        hint = (f"wait for it to finish (if pid {pid} is not a glcl_core run, delete {self.path.name})"
                if host == _host() else f"wait for it, or delete {self.path} if that process no longer runs")
        return RunLockedError(f"{self.folder}: this {self.what} is in use by {who} (lock {self.path}); {hint}",
                              self.path, pid if isinstance(pid, int) else None, host)

    # ------------------------------------------------------------------------------------------------ release
    def release(self) -> None:
        """Remove the lock file if it is still ours (idempotent)."""
        if not self.held:
            return
        self.held = False
        info = read_lock(self.path)
        if info is not None and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
