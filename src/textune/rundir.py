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

RUN_FORMAT = 1
# Files whose checksums the manifest records and loading verifies (plus everything under model/).
CHECKED = ("recipe.yaml", "labels.json")


def new_run_dir(parent: str | Path, name: str | None, stem: str) -> Path:
    parent = Path(parent)
    if name is None:
        name = f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = parent / name
    if path.exists() and any(path.iterdir()):
        raise TextuneError(
            f"{path}: run directory already exists; pick another --out, or continue it with --resume {path}"
        )
    return path


class RunLock:
    """A lock file holding the owner's pid: a second trainer refuses, a stale lock (dead pid) is taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise TextuneError(
                        f"{self.path.parent}: another textune process (pid {pid}) is training into this run "
                        f"directory; wait for it or use another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
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
    files += sorted(p for p in (run_dir / "model").rglob("*") if p.is_file())
    return {str(p.relative_to(run_dir)): _sha256(p) for p in files}


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
    _atomic.recover_dir(run_dir / "model")
    for need in ("manifest.json", "recipe.yaml", "labels.json", "model/config.json"):
        if not (run_dir / need).is_file():
            raise TextuneError(
                f"{run_dir}: incomplete run directory ({need} missing); finish it with "
                f"'textune train --resume {run_dir}' or train again"
            )
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TextuneError(f"{run_dir}/manifest.json: not valid JSON; the run directory is corrupted") from None
    fmt = manifest.get("format")
    if not isinstance(fmt, int) or fmt > RUN_FORMAT:
        raise TextuneError(
            f"{run_dir}: written by a newer textune ({manifest.get('textune')}, format {fmt}); upgrade textune"
        )
    recorded = manifest.get("files_sha256") or {}
    for rel, digest in recorded.items():
        p = run_dir / rel
        if not p.is_file():
            raise TextuneError(f"{run_dir}: {rel} is listed in manifest.json but missing; the run is incomplete")
        if _sha256(p) != digest:
            raise TextuneError(f"{run_dir}: checksum mismatch for {rel}; the file was altered or corrupted")
    return manifest
