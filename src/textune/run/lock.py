"""One trainer per run directory: a lock file held by the kernel (flock) and naming its owner's pid."""

from __future__ import annotations

import os
from pathlib import Path

from textune.errors import TextuneError
from textune.run.layout import LOCK

try:
    import fcntl
except ImportError:  # Windows: fall back to the pid check alone
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """A lock file holding the owner's pid: a second trainer refuses, a stale lock (dead pid) is taken over.

    Where the OS has ``flock`` the lock is also held by the kernel, which drops it the moment its owner dies
    (even by ``kill -9``), so there is no window in which two processes both judge a lock stale and both go
    on. The pid in the file is for the message (and the liveness check where ``flock`` is missing).
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None
        self._made_dir = False

    def __enter__(self) -> RunLock:
        run_dir = self.path.parent
        self._made_dir = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = _acquire_flock(self.path) if fcntl is not None else _acquire_pidfile(self.path)
        except BaseException:
            self._remove_dir_if_made()
            raise
        return self

    def __exit__(self, *exc) -> None:
        # Unlink before unlocking: a process that opened the old file while we held it re-checks the inode
        # after locking (see _acquire_flock) and starts over on the new path.
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._remove_dir_if_made()

    def _remove_dir_if_made(self) -> None:
        """Leaves no empty run directory behind when the run failed before writing anything."""
        run_dir = self.path.parent
        if self._made_dir:
            try:
                run_dir.rmdir()  # only succeeds when empty
            except OSError:
                pass


def _refuse(lock: Path, pid: int) -> TextuneError:
    return TextuneError(
        f"{lock.parent}: another textune process (pid {pid}) is training into this run directory; wait for it "
        f"to finish or use another --out"
    )


def _read_pid(lock: Path) -> int:
    try:
        return int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _acquire_flock(lock: Path) -> int:
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise _refuse(lock, _read_pid(lock)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous owner unlinked the file between our open and our lock: try the new one
            os.close(fd)
            continue
        # The file may hold a dead owner's pid (a stale lock): the kernel lock says it is ours now.
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd


def _acquire_pidfile(lock: Path) -> None:
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = _read_pid(lock)
            if pid and pid != os.getpid() and pid_alive(pid):
                raise _refuse(lock, pid) from None
            lock.unlink(missing_ok=True)  # stale: its owner is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return None


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
