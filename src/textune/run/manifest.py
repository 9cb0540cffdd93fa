"""The manifest: package versions, seed, device, precision and the checksum of every file loading trusts."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import sys
from pathlib import Path

from textune import _atomic
from textune._version import __version__
from textune.errors import TextuneError
from textune.run.layout import CHECKED, CHECKED_DIRS, MANIFEST, MODEL, RECIPE, task_state_path

# 2: the task state is task.json (format 1 called it labels.json) and the manifest records the precision.
RUN_FORMAT = 2


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


def checksums(run_dir: Path) -> dict[str, str]:
    files = [run_dir / n for n in CHECKED if (run_dir / n).is_file()]
    for sub in CHECKED_DIRS:
        files += sorted(p for p in (run_dir / sub).rglob("*") if p.is_file())
    return {p.relative_to(run_dir).as_posix(): _atomic.sha256_file(p) for p in files}


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


def write_manifest(
    run_dir: Path, *, seed: int, data_hashes: dict[str, str], device: str, precision: str | None = None
) -> None:
    """Written last: a run directory with a manifest is complete. ``precision`` is what the run evaluated with
    (Accelerate's ``no|bf16|fp16``), the default of every later prediction from it."""
    manifest = {
        "format": RUN_FORMAT,
        "textune": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "device": device,
        "precision": precision,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "versions": _versions(),
        "data_sha256": data_hashes,
        "files_sha256": checksums(run_dir),
    }
    _atomic.write_json(run_dir / MANIFEST, manifest)


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
    state_name = task_state_path(run_dir).name
    for need in (MANIFEST, RECIPE, state_name, f"{MODEL}/config.json"):
        if not (run_dir / need).is_file():
            raise TextuneError(
                f"{run_dir}: incomplete run directory ({need} missing); finish it with "
                f"'textune train --resume {run_dir}' or train again"
            )
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
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
    for need in (*CHECKED, f"{MODEL}/config.json"):  # present files that the manifest does not cover
        if (run_dir / need).is_file() and need not in recorded:
            raise TextuneError(f"{run_dir}/manifest.json: has no checksum for {need}; the run directory is corrupted")
    root = run_dir.resolve()
    for rel, digest in recorded.items():
        p = run_dir / str(rel)
        if root not in p.resolve().parents:
            raise TextuneError(f"{run_dir}/manifest.json: lists {rel!r} outside the run directory; it was altered")
        if not p.is_file():
            raise TextuneError(f"{run_dir}: {rel} is listed in manifest.json but missing; the run is incomplete")
        if _atomic.sha256_file(p) != digest:
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
