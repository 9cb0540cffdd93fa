"""The run directory: creation, lock, manifest with checksums, and verified loading."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from textune import __version__, _atomic
from textune.errors import TextuneError

try:
    import fcntl
except ImportError:  # Windows: fall back to the pid check alone
    fcntl = None  # type: ignore[assignment]

RUN_FORMAT = 1
# Files whose checksums the manifest records and loading verifies, plus every file under CHECKED_DIRS.
CHECKED = ("recipe.yaml", "labels.json", "features.json")
CHECKED_DIRS = ("model", "adapter")


def new_run_dir(parent: str | Path, name: str | None, stem: str) -> Path:
    parent = Path(parent)
    if name is None:
        name = f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = parent / name
    if path.exists() and any(not p.name.startswith(".") for p in path.iterdir()):  # dot-files: lock, temporaries
        raise TextuneError(
            f"{path}: run directory already exists; pick another --out, or continue it with --resume {path}"
        )
    return path


class RunLock:
    """A lock file holding the owner's pid: a second trainer refuses, a stale lock (dead pid) is taken over.

    Where the OS has ``flock`` the lock is also held by the kernel, which drops it the moment its owner dies
    (even by ``kill -9``), so there is no window in which two processes both judge a lock stale and both go
    on. The pid in the file is for the message (and the liveness check where ``flock`` is missing).
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksums(run_dir: Path) -> dict[str, str]:
    files = [run_dir / n for n in CHECKED if (run_dir / n).is_file()]
    for sub in CHECKED_DIRS:
        files += sorted(p for p in (run_dir / sub).rglob("*") if p.is_file())
    return {p.relative_to(run_dir).as_posix(): _sha256(p) for p in files}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path.cwd())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "textune": __version__}
    for pkg in (
        "torch",
        "transformers",
        "tokenizers",
        "accelerate",
        "peft",
        "scikit-learn",
        "pandas",
        "numpy",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_manifest(run_dir: Path, *, seed: int, data_hashes: dict[str, str], device: str) -> None:
    manifest = {
        "format": RUN_FORMAT,
        "textune": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "device": device,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "versions": _versions(),
        "data_sha256": data_hashes,
        "files_sha256": checksums(run_dir),
    }
    _atomic.write_json(run_dir / "manifest.json", manifest)


def verify_run_dir(run_dir: str | Path) -> dict:
    """Refuses a run directory that is incomplete, from a newer textune, or altered since it was written.

    Returns:
        The manifest.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TextuneError(f"{run_dir}: run directory not found")
    for sub in CHECKED_DIRS:
        _atomic.recover_dir(run_dir / sub)
    for need in ("manifest.json", "recipe.yaml", "labels.json", "model/config.json"):
        if not (run_dir / need).is_file():
            raise TextuneError(
                f"{run_dir}: incomplete run directory ({need} missing); finish it with "
                f"'textune train --resume {run_dir}' or train again"
            )
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TextuneError(f"{run_dir}/manifest.json: not valid JSON; the run directory is corrupted") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files_sha256"), dict):
        raise TextuneError(f"{run_dir}/manifest.json: has no file checksums; the run directory is corrupted")
    fmt = manifest.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise TextuneError(f"{run_dir}/manifest.json: has no format number; the run directory is corrupted")
    if fmt > RUN_FORMAT:
        raise TextuneError(
            f"{run_dir}: written by a newer textune ({manifest.get('textune')}, run format {fmt}; this textune "
            f"reads format {RUN_FORMAT}); upgrade textune (pip install -U textune)"
        )
    recorded: dict = manifest["files_sha256"]
    for need in (*CHECKED, "model/config.json"):  # present files that the manifest does not cover
        if (run_dir / need).is_file() and need not in recorded:
            raise TextuneError(f"{run_dir}/manifest.json: has no checksum for {need}; the run directory is corrupted")
    root = run_dir.resolve()
    for rel, digest in recorded.items():
        p = run_dir / str(rel)
        if root not in p.resolve().parents:
            raise TextuneError(f"{run_dir}/manifest.json: lists {rel!r} outside the run directory; it was altered")
        if not p.is_file():
            raise TextuneError(f"{run_dir}: {rel} is listed in manifest.json but missing; the run is incomplete")
        if _sha256(p) != digest:
            raise TextuneError(f"{run_dir}: checksum mismatch for {rel}; the file was altered or corrupted")
    # A file added to the weights' folders after the run (say a pytorch_model.bin, which loads by unpickling)
    # would be read by from_pretrained without being checked: refuse it.
    for sub in CHECKED_DIRS:
        for p in sorted((run_dir / sub).rglob("*")) if (run_dir / sub).is_dir() else []:
            rel = p.relative_to(run_dir).as_posix()
            if p.is_file() and rel not in recorded:
                raise TextuneError(
                    f"{run_dir}: {rel} is not listed in manifest.json (added after training?); remove it"
                )
    return manifest
