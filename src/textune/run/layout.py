"""Every file name of a run directory, and the one place that reads and writes them.

A run directory (``textune train``), a baseline directory (``textune baseline``) and an exported model directory
(``textune export``) share these names; the loop, the Predictor, export, the report, compare and tune read and write
through the functions here, never through string literals of their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from textune import _atomic
from textune.errors import TextuneError

RECIPE = "recipe.yaml"
TASK_STATE = "task.json"  # label order, class weights, target statistics, temperature, thresholds
LEGACY_TASK_STATE = "labels.json"  # the same content, under the name runs of textune <= 0.1 (format 1) used
FEATURES = "features.json"
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
HISTORY = "metrics.jsonl"
MODEL = "model"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINTS}/last"
PREDICTIONS = "predictions"
PLOTS = "plots"
REPORT = "report.html"
EVALUATIONS = "evaluations"
LOCK = ".lock"
EXPORT_META = "textune.json"  # in an exported directory: recipe, task state, features, precision

# Files whose checksums the manifest records and loading verifies, plus every file under CHECKED_DIRS.
CHECKED = (RECIPE, TASK_STATE, LEGACY_TASK_STATE, FEATURES)
CHECKED_DIRS = (MODEL, ADAPTER)


def read_json(path: Path, what: str = "file") -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextuneError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TextuneError(f"{path}: {what} is not valid JSON; the directory is corrupted") from None


def read_recipe_raw(run_dir: Path) -> dict:
    """The saved recipe as a plain mapping (validated by the caller with ``recipe_from_dict``)."""
    path = Path(run_dir) / RECIPE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextuneError(f"{run_dir}: not a textune run directory (no {RECIPE})") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise TextuneError(f"{path}: not valid YAML; the run directory is corrupted") from None
    if not isinstance(raw, dict):
        raise TextuneError(f"{path}: not a recipe mapping; the run directory is corrupted")
    return raw


def write_recipe(run_dir: Path, text: str) -> Path:
    return _atomic.write_text(Path(run_dir) / RECIPE, text)


def task_state_path(run_dir: Path) -> Path:
    """``task.json``, or ``labels.json`` in a run written before the rename."""
    new = Path(run_dir) / TASK_STATE
    old = Path(run_dir) / LEGACY_TASK_STATE
    return old if not new.is_file() and old.is_file() else new


def read_task_state(run_dir: Path) -> dict:
    return read_json(task_state_path(run_dir), "task state")


def write_task_state(run_dir: Path, state: dict) -> Path:
    return _atomic.write_json(Path(run_dir) / TASK_STATE, state)


def read_features(run_dir: Path) -> dict | None:
    path = Path(run_dir) / FEATURES
    return read_json(path, "feature statistics") if path.is_file() else None


def write_features(run_dir: Path, state: dict) -> Path:
    return _atomic.write_json(Path(run_dir) / FEATURES, state)


def read_summary(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / SUMMARY, SUMMARY)


def write_summary(run_dir: Path, summary: dict) -> Path:
    return _atomic.write_json(Path(run_dir) / SUMMARY, summary)


def read_history(run_dir: Path, max_step: int | None = None) -> list[dict]:
    """Records of metrics.jsonl (a torn last line from a kill is skipped), optionally up to ``max_step``."""
    path = Path(run_dir) / HISTORY
    out: list[dict] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if max_step is None or rec.get("step", 0) <= max_step:
            out.append(rec)
    return out


def write_history(run_dir: Path, records: list[dict]) -> None:
    _atomic.write_text(Path(run_dir) / HISTORY, "".join(json.dumps(r) + "\n" for r in records))


def append_history(run_dir: Path, record: dict) -> None:
    _atomic.append_jsonl(Path(run_dir) / HISTORY, record)


def prediction_path(run_dir: Path, split: str) -> Path:
    return Path(run_dir) / PREDICTIONS / f"{split}.csv"


def has_model(path: str | Path) -> bool:
    """A run directory whose model a frozen encoder can load: a saved recipe beside ``model/``."""
    p = Path(path)
    return (p / RECIPE).is_file() and (p / MODEL).is_dir()


def is_export_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / EXPORT_META).is_file() and not (p / MANIFEST).is_file()


def is_baseline_dir(path: str | Path) -> bool:
    summary = Path(path) / SUMMARY
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text(encoding="utf-8")).get("kind") == "baseline"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
