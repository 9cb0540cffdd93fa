"""Checks on the paths a command writes, made before it writes anything.

Every command that writes goes through :func:`check_output_file` or :func:`check_output_dir`: an output may not be
one of the command's inputs (compared by identity, so symlinks, hard links and ``a/../b`` spellings count), may not
land inside a textune run directory the command does not own (the run's checksums and resume state would be
silently broken), and must be of the right kind (a file path where a file goes, a directory path where a directory
goes), so that the mistake is one ``error:`` line instead of an ``IsADirectoryError`` traceback after a model load.

Standard library only: the CLI calls these before it imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from textune.errors import TextuneError
from textune.run import layout

# What makes a folder a run directory (or a baseline directory): a marker file beside one of its companions.
# recipe.yaml beside model/ is not enough: that is also a project folder holding its recipe and a local base model.
# metrics.jsonl is written when training starts, so an unfinished or interrupted run (no model/ yet) counts too.
RUN_SIGNS = {
    layout.MANIFEST: (layout.MODEL, layout.SUMMARY),
    layout.RECIPE: (layout.SUMMARY, layout.HISTORY),
}

PathLike = str | os.PathLike


def is_run_dir(path: PathLike) -> bool:
    """True when ``path`` is a textune run or baseline directory, finished or not: ``manifest.json`` beside
    ``model/`` or ``summary.json``, or ``recipe.yaml`` beside ``summary.json`` or ``metrics.jsonl``."""
    path = Path(path)
    try:
        return any(
            (path / marker).is_file() and any((path / c).exists() for c in companions)
            for marker, companions in RUN_SIGNS.items()
        )
    except OSError:  # an unreadable folder is not one we can recognise
        return False


def enclosing_run_dir(path: PathLike) -> Path | None:
    """The nearest run directory that holds ``path``, looking at every parent up to the filesystem root.

    Args:
        path: a file or folder, existing or not; symlinks in it are resolved, since that is where a write lands.

    Returns:
        The resolved run directory, or ``None`` when no parent of ``path`` is one.
    """
    for parent in _resolved(path).parents:
        if is_run_dir(parent):
            return parent
    return None


def check_output_file(
    path: PathLike,
    inputs: Iterable[PathLike | None] = (),
    what: str = "--output",
    owned: Iterable[PathLike] = (),
) -> Path:
    """Refuses a file the command must not write.

    Args:
        path: the file the command is about to write.
        inputs: the command's input files and folders (missing ones and ``None`` are skipped). ``path`` may be
            none of the files and lie in none of the folders.
        what: how the user named this output (an option like ``--output``), for the message.
        owned: folders the command owns, e.g. ``RUN/evaluations`` for ``evaluate``: inside one, the run-directory
            and input-folder checks are waived (the same-file check is not).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TextuneError: ``path`` is a directory, lies under a file, is one of the inputs, or lies inside an input
            folder or a run directory it does not own.
    """
    path = Path(path)
    if path.is_dir():
        raise TextuneError(f"{what} {path}: is a directory; give a file path (e.g. {path / ('out' + path.suffix)})")
    _check_parents(path, what)
    files, folders = _split_inputs(inputs)
    for inp in files:
        if _same_file(path, inp):
            raise TextuneError(
                f"{what} {path}: is the same file as the input {inp}; an input is never overwritten, write to "
                f"another path"
            )
    if not _inside_any(path, owned):
        _check_placement(path, folders, what)
    return path


def check_output_dir(
    path: PathLike,
    inputs: Iterable[PathLike | None] = (),
    what: str = "--out",
    holds_outputs: bool = False,
) -> Path:
    """Refuses a directory the command must not create or fill.

    The directory itself belongs to the command (an existing non-empty one is the command's own business, e.g.
    ``train`` refuses it and ``--resume`` continues it); its parents are checked.

    Args:
        path: the directory the command is about to create or write into.
        inputs: the command's input files and folders (missing ones and ``None`` are skipped); ``path`` may not be
            an input folder nor lie inside one.
        what: how the user named this output (an option like ``--out``), for the message.
        holds_outputs: ``path`` is a parent the command creates its own folders in (``output.dir``, ``baseline
            --out``), so it may not be a run directory itself either.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TextuneError: ``path`` is an existing file or lies under one, equals or lies inside an input folder, or
            lies inside a run directory.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TextuneError(f"{what} {path}: is an existing file, not a directory; choose a directory path")
    _check_parents(path, what)
    files, folders = _split_inputs(inputs)
    for folder in folders:
        if _resolved(path) == _resolved(folder):
            raise TextuneError(
                f"{what} {path}: is the input {folder}; an input is never overwritten, choose a path outside it"
            )
    if holds_outputs and is_run_dir(path):
        raise TextuneError(
            f"{what} {path}: is a textune run directory; its files are checksummed and must not be added to, "
            f"choose the folder that holds your runs"
        )
    _check_placement(path, folders, what)
    return path


def _resolved(path: PathLike) -> Path:
    """Absolute path with symlinks resolved as far as they exist (the rest is kept as written)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _landing_parents(path: Path) -> list[Path]:
    """The folders ``path`` would land in: the resolved folder it is written into (an atomic write renames over
    the link itself) and, for a symlink, the folder of its target. Order: nearest first, no duplicates."""
    seen: list[Path] = []
    for start in (_resolved(path.parent) / path.name, _resolved(path)):
        for parent in start.parents:
            if parent not in seen:
                seen.append(parent)
    return seen


def _check_parents(path: Path, what: str) -> None:
    """The nearest existing parent must be a folder: ``out.csv/x`` cannot be made when ``out.csv`` is a file."""
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise TextuneError(
                    f"{what} {path}: {parent} is a file, not a directory, so nothing can be written under it; "
                    f"choose another path"
                )
            return


def _split_inputs(inputs: Iterable[PathLike | None]) -> tuple[list[Path], list[Path]]:
    files, folders = [], []
    for inp in inputs:
        if inp is None:
            continue
        p = Path(inp)
        if p.is_dir():
            folders.append(p)
        elif p.exists():
            files.append(p)
    return files, folders


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        try:
            return os.path.samefile(a, b)  # follows symlinks and sees hard links
        except OSError:
            pass
    return _resolved(a) == _resolved(b)


def _inside_any(path: Path, folders: Iterable[PathLike]) -> bool:
    resolved = _resolved(path)
    return any(resolved.is_relative_to(_resolved(f)) for f in folders)


def _check_placement(path: Path, input_folders: list[Path], what: str) -> None:
    """``path`` (a file, or a folder the command creates) may lie in no run directory and no input folder."""
    for parent in _landing_parents(path):
        if is_run_dir(parent):
            raise TextuneError(
                f"{what} {path}: lies inside the textune run directory {parent}, whose files are checksummed and "
                f"must not be overwritten or added to; write it outside that directory"
            )
    for folder in input_folders:
        if _inside_any(path, [folder]):
            raise TextuneError(
                f"{what} {path}: lies inside the input {folder}; an input is never written into, choose a path "
                f"outside it"
            )
