"""``textune compare runs/*``: one leaderboard of fine-tuned runs and baselines (table, CSV, PNG bar chart and a
self-contained HTML page with both: inline CSS, the chart as a data URI, no scripts or links).

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
import os
from pathlib import Path
from typing import Any

import pandas as pd

from textune import _atomic
from textune.errors import TextuneError
from textune.report.html import CSS, direction, esc, grid_table, img, main_metric_value, peft_label, td

SUFFIXES = (".csv", ".png", ".html")  # the files compare writes, in this order
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
    return direction(metric, task, recorded) == "min"


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
    table, notes = _leaderboard(paths)
    return table.drop(columns=["_path", "_direction"]), notes


def _leaderboard(paths: list[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """:func:`leaderboard` with two more columns for the page: ``_path`` (the directory) and ``_direction``."""
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
        rows.append({**run_row(p, summary), "_path": p})
    table = pd.DataFrame(rows, columns=[*COLUMNS, "_direction", "_path"])
    if len(table):
        # rank inside each (task, metric) group in that metric's direction; NaN (metric missing) goes last
        rows = zip(table.main_metric, table.value, table.task, table["_direction"], strict=True)
        table["_direction"] = ["min" if lower_is_better(m, t, d) else "max" for m, _, t, d in rows]
        table["_key"] = [v if d == "min" else -v for v, d in zip(table.value, table["_direction"], strict=True)]
        table = table.sort_values(["task", "main_metric", "_key"], na_position="last", kind="stable")
        table = table.drop(columns="_key").reset_index(drop=True)
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


def _bars(ax, group: pd.DataFrame, title: str) -> None:
    shown = group.iloc[::-1]  # barh draws bottom-up: reverse so the best row sits on top
    labels = [f"{r.run} ({r.peft})" if r.peft not in ("-", None) else str(r.run) for r in shown.itertuples()]
    values = shown["value"].fillna(0).to_numpy(dtype=float)
    colors = ["#9e9e9e" if k == "baseline" else "#1f77b4" for k in shown["kind"]]
    bars = ax.barh(range(len(shown)), values, color=colors)
    ax.set_yticks(range(len(shown)), labels)
    for bar, v in zip(bars, shown["value"], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, "  -" if pd.isna(v) else f" {v:.4f}", va="center")
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    if hi > lo:
        ax.set_xlim(lo * 1.15, hi * 1.18)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)


def plot_leaderboard(table: pd.DataFrame, path: Path) -> Path:
    """Horizontal bars of each run's main metric (best at the top), baselines in grey: one panel per (task,
    metric), since an accuracy and an error in percent share no axis."""
    from textune.report.plots import _save, plt

    groups = [g for _, g in table.groupby(["task", "main_metric"], sort=False, dropna=False)] or [table]
    sizes = [max(len(g), 1) for g in groups]
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(8, 0.9 + 0.75 * len(groups) + 0.45 * sum(sizes)), height_ratios=sizes, squeeze=False
    )
    for ax, group in zip(axes[:, 0], groups, strict=True):
        metric = str(group["main_metric"].iloc[0]) if len(group) else ""
        task = group["task"].iloc[0] if len(group) else None
        words = "lower is better" if lower_is_better(metric, task, _recorded(group)) else "higher is better"
        _bars(ax, group, f"{task} · {metric} on validation ({words})")
    fig.suptitle("textune leaderboard (grey: baselines)")
    return _save(fig, path)


def _relative(path: Path, base: Path) -> str:
    """``path`` as seen from the page's folder, so the page and the runs can move together."""
    try:
        return os.path.relpath(Path(path).resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(Path(path).resolve())


def _gap_cell(value: float, ref: float, dirn: str, is_ref: bool) -> str:
    if is_ref:
        return "<td class='num muted'>reference</td>"
    gap = value - ref
    if math.isnan(gap):
        return "<td class='num'>-</td>"
    good = gap < 0 if dirn == "min" else gap > 0
    cls = "" if gap == 0 else (" better" if good else " worse")
    return f"<td class='num{cls}'>{gap:+.4f}</td>"


def _group_html(group: pd.DataFrame, base: Path) -> str:
    """One (task, metric) group: rank, run, kind, model, PEFT, parameters, the metric, its gap to the reference
    (the best baseline when the group has one, else the leader), wall time and speed."""
    metric, dirn = group["main_metric"].iloc[0], group["_direction"].iloc[0]
    group = group.rename(columns={"_path": "path"}).reset_index(drop=True)  # itertuples drops "_" names
    ranked = group[group["value"].notna()]  # best first already
    baselines = ranked[ranked["kind"] == "baseline"]
    ref_name = "best baseline" if len(baselines) else "leader"
    ref_at = (baselines if len(baselines) else ranked).index[:1]
    ref = float(group["value"][ref_at[0]]) if len(ref_at) else math.nan
    rows = []
    for i, r in enumerate(group.itertuples()):
        rel = _relative(r.path, base)
        kind = "<span class='badge base'>baseline</span>" if r.kind == "baseline" else "fine-tune"
        cells = [
            td(i + 1),
            f"<th><span class='nowrap'>{esc(str(r.run))}</span><div class='small muted wrap'>{esc(rel)}</div></th>",
            f"<td>{kind}</td>",
            td(r.model, wrap=True),
            td(r.peft),
            td(_num(r.trainable_params, integer=True), "parameters.trainable", rel),
            td(r.value, f"validation.{metric}", rel).replace("<td class='num'", "<td class='num strong'", 1),
            _gap_cell(r.value, ref, dirn, i in ref_at),
            td(_num(r.wall_s), digits=1),
            td(_num(r.samples_per_s), "train_samples_per_s", rel, digits=1),
        ]
        rows.append(f"<tr class='{'baseline' if r.kind == 'baseline' else ''}'>{''.join(cells)}</tr>")
    header = ["#", "run", "kind", "model", "PEFT", "trainable params", metric, f"vs {ref_name}", "wall s", "samples/s"]
    words = {"max": "higher is better", "min": "lower is better"}[dirn]
    task = esc(str(group["task"].iloc[0]))
    title = f"{task} · {esc(metric)} on validation <span class='muted small'>({words})</span>"
    return f"<h2>{title}</h2>" + grid_table(header, rows, scroll=True, num=[0, 5, 6, 7, 8, 9])


def _recorded(group: pd.DataFrame) -> str | None:
    """The direction the group's runs recorded, when the table still carries it (see :func:`_leaderboard`)."""
    return group["_direction"].iloc[0] if "_direction" in group.columns and len(group) else None


def _num(v: Any, integer: bool = False) -> Any:
    """pandas hands missing numbers over as NaN and counts as numpy scalars: back to None, int or float."""
    if v is None or pd.isna(v):
        return None
    return int(v) if integer else float(v)


def leaderboard_html(table: pd.DataFrame, notes: list[str], png: Path, base: Path) -> str:
    """The leaderboard page: one ranked table per (task, metric), baselines marked, then the bar chart; CSS and
    the PNG inline, no scripts or links. ``table`` is :func:`_leaderboard`'s (with ``_path``); ``base`` is the
    page's folder, against which each row's ``data-run`` (the directory whose summary.json holds its numbers) is
    relative."""
    n_base = int((table["kind"] == "baseline").sum())
    chips = [f"{len(table) - n_base} fine-tuned", f"{n_base} baseline{'s' if n_base != 1 else ''}"]
    groups = [g for _, g in table.groupby(["task", "main_metric"], sort=False, dropna=False)]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>textune leaderboard</title><style>{CSS}td.strong{{font-weight:650}}</style></head><body>",
        "<h1>textune leaderboard</h1>",
        "<ul class='meta'>" + "".join(f"<li>{esc(c)}</li>" for c in chips) + "</ul>",
        "<p class='muted small'>Best first within each task and metric, on each run's validation rows; "
        "baselines in grey.</p>",
        *(_group_html(g, base) for g in groups),
        "<h2>Chart</h2>",
        f"<figure>{img(png.read_bytes(), 'leaderboard bar chart')}</figure>",
    ]
    if notes:
        parts += ["<h2>Skipped</h2><ul class='small'>", *(f"<li>{esc(n)}</li>" for n in notes), "</ul>"]
    parts += ["<footer>Written by <code>textune compare</code> from each directory's summary.json.</footer>"]
    return "\n".join(parts) + "\n</body></html>\n"


def _outputs(out: str | Path) -> list[Path]:
    out = Path(out)
    if out.suffix.lower() in SUFFIXES:
        out = out.with_suffix("")
    return [out.with_name(out.name + suffix) for suffix in SUFFIXES]


def compare(paths: list[str | Path], out: str | Path = "leaderboard") -> tuple[pd.DataFrame, list[str], list[Path]]:
    """Builds the leaderboard and writes ``<out>.csv``, ``<out>.png`` and ``<out>.html`` atomically.

    Args:
        paths: run and baseline directories (others are skipped with a note).
        out: output path without suffix (a ``.csv``/``.png``/``.html`` suffix is dropped).

    Returns:
        ``(table, notes, files written)``.

    Raises:
        TextuneError: none of ``paths`` is a finished run or baseline, or an output path may not be written (a
            directory, a compared path, or inside a run directory).
    """
    from textune.safe_paths import check_output_file

    table, notes = _leaderboard(paths)
    if table.empty:
        raise TextuneError(
            "compare: none of the given paths holds a summary.json; pass finished run or baseline directories, "
            "e.g. textune compare runs/*"
        )
    csv_path, png_path, html_path = files = _outputs(out)
    # every output checked before the first is written, so a refused one leaves nothing behind
    for path in files:
        check_output_file(path, inputs=paths, what="--out")
    public = table.drop(columns=["_path", "_direction"])
    _atomic.write_with(csv_path, lambda p: public.to_csv(p, index=False))
    plot_leaderboard(table, png_path)
    _atomic.write_text(html_path, leaderboard_html(table, notes, png_path, html_path.parent))
    return public, notes, files
