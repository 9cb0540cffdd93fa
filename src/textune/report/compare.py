"""``textune compare runs/*``: one leaderboard of fine-tuned runs and baselines (table, CSV, PNG bar chart).

Every row comes from a directory's ``summary.json``; directories without one (unfinished runs, unrelated
folders) are skipped with a note. Columns:

* ``main_metric``/``value``: the run's main metric (``summary["main_metric"]``) on validation.
* ``trainable_params``: parameters the optimizer (or the linear model of a baseline) updated.
* ``wall_s``: ``wall_seconds`` when recorded (baselines: featurizing + fitting + predicting); for a training run
  the sum of tokenizing, training steps and final prediction (periodic evaluations excluded).
* ``samples_per_s``: training rows processed per second of ``train_seconds``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from textune import _atomic
from textune.errors import TextuneError

COLUMNS = [
    "run",
    "kind",
    "task",
    "model",
    "peft",
    "trainable_params",
    "main_metric",
    "value",
    "wall_s",
    "samples_per_s",
]


def lower_is_better(metric: str, task: str | None = None, recorded: str | None = None) -> bool:
    """The direction of ``metric``: as the run recorded it (``summary["metric_direction"]``), else as its task
    declares it. A metric no task declares ranks descending, with a note from :func:`leaderboard`."""
    if recorded in ("min", "max"):
        return recorded == "min"
    from textune.errors import TextuneError
    from textune.tasks import TASKS, get_task

    if task in TASKS:
        try:
            return get_task(task).direction(metric) == "min"
        except TextuneError:
            pass
    return False


def main_metric_value(summary: dict) -> tuple[str, float]:
    """``(name, validation value)`` of a summary's main metric; NaN when validation lacks it."""
    metric = summary.get("main_metric") or "accuracy"
    value = (summary.get("validation") or {}).get(metric)
    return metric, float(value) if isinstance(value, int | float) else math.nan


def peft_label(summary: dict, recipe: dict | None) -> str:
    """``-`` for a baseline, ``full`` for full fine-tuning, ``lora r=8`` (and the like) for adapters."""
    if summary.get("kind") == "baseline":
        return "-"
    # where training records it (parameters.peft), else a top-level key, else the recipe's model.peft
    peft = (summary.get("parameters") or {}).get("peft") or summary.get("peft")
    if peft is None:
        peft = ((recipe or {}).get("model") or {}).get("peft")
    if isinstance(peft, str):
        return "full" if peft in ("none", "") else peft
    if isinstance(peft, dict):
        method = peft.get("method") or peft.get("type") or "none"
        if method == "none":
            return "full"
        rank = peft.get("r") or peft.get("rank")
        return f"{method} r={rank}" if rank else str(method)
    return "full"


def _recipe_of(run_dir: Path) -> dict:
    import yaml

    try:
        raw = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


def run_row(run_dir: Path, summary: dict) -> dict[str, Any]:
    """One leaderboard row from a run's ``summary.json``."""
    metric, value = main_metric_value(summary)
    wall = summary.get("wall_seconds")
    if wall is None:
        parts = [summary.get(k) for k in ("tokenize_seconds", "train_seconds", "predict_seconds")]
        wall = sum(p for p in parts if isinstance(p, int | float)) if any(p is not None for p in parts) else None
    return {
        "run": run_dir.name,
        "kind": "baseline" if summary.get("kind") == "baseline" else "fine-tune",
        "task": summary.get("task"),
        "model": summary.get("model"),
        "peft": peft_label(summary, _recipe_of(run_dir)),
        "trainable_params": (summary.get("parameters") or {}).get("trainable"),
        "main_metric": metric,
        "value": value,
        "wall_s": round(float(wall), 1) if wall is not None else None,
        "samples_per_s": summary.get("train_samples_per_s"),
        "_direction": summary.get("metric_direction"),
    }


def leaderboard(paths: list[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """Reads ``summary.json`` of each directory; best first within each (task, main metric).

    Returns:
        ``(table, notes)``: notes name the paths skipped and why.
    """
    rows, notes, seen = [], [], set()
    for p in map(Path, paths):
        if not p.is_dir():
            notes.append(f"{p}: skipped (not a directory)")
            continue
        if p.resolve() in seen:
            continue
        seen.add(p.resolve())
        path = p / "summary.json"
        if not path.is_file():
            notes.append(f"{p}: skipped (no summary.json: an unfinished run or not a run)")
            continue
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            notes.append(f"{p}: skipped (summary.json is not valid JSON)")
            continue
        rows.append(run_row(p, summary))
    table = pd.DataFrame(rows, columns=[*COLUMNS, "_direction"])
    if len(table):
        # rank inside each (task, metric) group in that metric's direction; NaN (metric missing) goes last
        rows = zip(table.main_metric, table.value, table.task, table.pop("_direction"), strict=True)
        table["_key"] = [v if lower_is_better(m, t, d) else -v for m, v, t, d in rows]
        table = table.sort_values(["task", "main_metric", "_key"], na_position="last", kind="stable")
        table = table.drop(columns="_key").reset_index(drop=True)
    else:
        table = table.drop(columns="_direction")
    return table, notes


def format_table(table: pd.DataFrame) -> str:
    """The leaderboard as aligned plain text."""
    shown = table.copy()
    shown["value"] = shown["value"].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
    shown["trainable_params"] = shown["trainable_params"].map(lambda v: "-" if pd.isna(v) else f"{int(v):,}")
    for col in ("wall_s", "samples_per_s"):
        shown[col] = shown[col].map(lambda v: "-" if pd.isna(v) else f"{v:,.1f}")
    shown = shown.fillna("-")
    return shown.to_string(index=False)


def plot_leaderboard(table: pd.DataFrame, path: Path) -> Path:
    """A horizontal bar chart of each run's main metric (best at the top), baselines in grey."""
    from textune.report.plots import _save, plt

    n = max(len(table), 1)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * n))
    shown = table.iloc[::-1]  # barh draws bottom-up: reverse so the best row sits on top
    labels = [f"{r.run} ({r.peft})" if r.peft not in ("-", None) else str(r.run) for r in shown.itertuples()]
    values = shown["value"].fillna(0).to_numpy(dtype=float)
    colors = ["#9e9e9e" if k == "baseline" else "#1f77b4" for k in shown["kind"]]
    bars = ax.barh(range(len(shown)), values, color=colors)
    ax.set_yticks(range(len(shown)), labels)
    for bar, v in zip(bars, shown["value"], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, "  -" if pd.isna(v) else f" {v:.4f}", va="center")
    metrics = sorted(set(table["main_metric"]))
    ax.set_xlabel(", ".join(metrics) + " (validation)")
    if len(values) and values.max() > 0:
        ax.set_xlim(0, values.max() * 1.15)
    ax.set_title("textune leaderboard (grey: baselines)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def compare(paths: list[str | Path], out: str | Path = "leaderboard") -> tuple[pd.DataFrame, list[str], list[Path]]:
    """Builds the leaderboard and writes ``<out>.csv`` and ``<out>.png`` atomically.

    Args:
        paths: run and baseline directories (others are skipped with a note).
        out: output path without suffix (a ``.csv``/``.png`` suffix is dropped).

    Returns:
        ``(table, notes, files written)``.

    Raises:
        TextuneError: none of ``paths`` is a finished run or baseline.
    """
    table, notes = leaderboard(paths)
    if table.empty:
        raise TextuneError(
            "compare: none of the given paths holds a summary.json; pass finished run or baseline directories, "
            "e.g. textune compare runs/*"
        )
    out = Path(out)
    if out.suffix.lower() in (".csv", ".png"):
        out = out.with_suffix("")
    csv_path = out.with_name(out.name + ".csv")
    png_path = out.with_name(out.name + ".png")
    _atomic.write_with(csv_path, lambda p: table.to_csv(p, index=False))
    plot_leaderboard(table, png_path)
    return table, notes, [csv_path, png_path]
