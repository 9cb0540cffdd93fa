"""Atomic writes: a reader (or a process killed half-way) sees the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_with(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Calls ``writer(tmp_path)`` then renames ``tmp_path`` over ``path`` (same directory, so rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Appends one JSON line. A kill mid-append can leave a partial last line; readers skip it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()


def aside(dst: Path) -> Path:
    """Where :func:`replace_dir` keeps the old ``dst`` while swapping: a hidden name of textune's own, so a
    user's ``<dst>.old`` folder beside it is never taken for it (and deleted)."""
    return dst.with_name(f".{dst.name}.textune-old")


def replace_dir(src: Path, dst: Path) -> None:
    """Moves a fully written directory ``src`` to ``dst``, replacing ``dst`` if present.

    Directories cannot be swapped atomically on POSIX, so the old one is first renamed aside: at every moment
    either ``dst`` or its :func:`aside` copy is complete, and :func:`recover_dir` picks up the latter after a crash.
    """
    old = aside(dst)
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(dst: Path) -> None:
    """After a crash inside :func:`replace_dir`, puts the complete old copy back in place."""
    old = aside(dst)
    if not dst.exists() and old.exists():
        os.replace(old, dst)
    elif old.exists():
        shutil.rmtree(old)


def write_csv(path: str | Path, df) -> Path:
    """A DataFrame as CSV, atomically. Cells holding a carriage return are quoted too: the csv module quotes only
    the characters of its line terminator ("\\n"), and a bare "\\r" would split the row when read back."""
    return write_with(path, lambda p: df.to_csv(p, index=False, quoting=csv_quoting(df)))


def csv_quoting(df) -> int:
    """QUOTE_NONNUMERIC when a text cell holds a carriage return (a bare one would split the row when read back),
    else QUOTE_MINIMAL."""
    import csv

    has_cr = any(
        df[c].astype(str).str.contains("\r", regex=False).any()
        for c in df.columns
        if df[c].dtype == object or str(df[c].dtype).startswith("str")
    )
    return csv.QUOTE_NONNUMERIC if has_cr else csv.QUOTE_MINIMAL


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (data files, weights, run files)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
