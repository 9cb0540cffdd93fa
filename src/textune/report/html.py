"""report.html: one self-contained page per run or baseline, readable offline.

Everything is inline: the CSS in a ``<style>`` block, every plot as a ``data:image/png;base64`` URI, no scripts,
fonts or links, so the file opens from a USB stick or an air-gapped machine exactly as it was written.
Regenerate it with ``textune report runs/NAME``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from textune import _atomic
from textune.errors import TextuneError
from textune.run import layout

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.25em .7em;"
    "text-align:left}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "img{max-width:100%;border:1px solid #eee}pre{background:#f8f8f8;padding:.8em;overflow-x:auto}"
    ".main{font-size:1.3em}"
)
# summary.json keys shown under "Timing and resources", in this order when present
_TIMING = (
    "device",
    "precision",
    "wall_seconds",
    "tokenize_seconds",
    "featurize_seconds",
    "fit_seconds",
    "train_seconds",
    "predict_seconds",
    "train_samples_per_s",
    "train_tokens_per_s",
    "peak_memory_mb",
)


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def _cell(v: Any, digits: int = 4) -> str:
    cls = " class='num'" if isinstance(v, int | float) and not isinstance(v, bool) else ""
    return f"<td{cls}>{html.escape(_fmt(v, digits))}</td>"


def _kv_table(rows: dict[str, Any], digits: int = 4) -> str:
    if not rows:
        return "<p>(none recorded)</p>"
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th>{_cell(v, digits)}</tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def _grid(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _read_recipe(run_dir: Path) -> tuple[str, dict]:
    import yaml

    path = run_dir / layout.RECIPE
    if not path.is_file():
        return "", {}
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = None
    return text, raw if isinstance(raw, dict) else {}


def _metrics_section(summary: dict) -> str:
    splits = [s for s in ("validation", "test") if summary.get(s)]
    if not splits:
        return "<p>(no labelled split was evaluated)</p>"
    names = list(dict.fromkeys(k for s in splits for k in summary[s]))
    return _grid(["metric", *splits], [[n, *(summary[s].get(n) for s in splits)] for n in names])


def _predictions(run_dir: Path) -> dict[str, Any]:
    """The saved prediction files by split: row counts and true labels, even if the data files moved since."""
    import pandas as pd

    out: dict[str, Any] = {}
    for path in sorted((run_dir / "predictions").glob("*.csv")):
        try:
            out[path.stem] = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
    return out


def _data_section(run_dir: Path, summary: dict, recipe: dict, manifest: dict) -> str:
    data = recipe.get("data") or {}
    hashes = manifest.get("data_sha256") or {}
    preds = _predictions(run_dir)
    frac = data.get("valid_fraction")
    held_out = f"held out from train ({frac:.0%}, seed {manifest.get('seed', '-')})" if frac else "held out from train"
    files = {"train": data.get("train"), "validation": data.get("validation") or held_out, "test": data.get("test")}
    rows = {"train": summary.get("train_rows"), "validation": summary.get("validation_rows")}
    table = []
    for split, file in files.items():
        if file is None:
            continue
        n = rows.get(split) if rows.get(split) is not None else (len(preds[split]) if split in preds else None)
        table.append([split, file, n, (hashes.get(split) or "-")[:16]])
    parts = [_grid(["split", "file", "rows", "sha256 (first 16)"], table)]
    parts.append(
        _kv_table(
            {
                "text": data.get("text"),
                "label column": data.get("label"),
                "id column": data.get("id"),
                "max_length (tokens)": data.get("max_length"),
            }
        )
    )
    labels = _read_json(layout.task_state_path(run_dir)).get("labels")
    label_col = data.get("label")
    counted = {s: df[label_col].value_counts() for s, df in preds.items() if label_col in df.columns}
    if labels and counted:
        parts.append("<h3>True labels per evaluated split</h3>")
        grid = [[lab, *(int(c.get(str(lab), 0)) for c in counted.values())] for lab in labels]
        parts.append(_grid(["label", *counted], grid))
    elif labels:
        parts.append(f"<p>labels: {html.escape(', '.join(map(str, labels)))}</p>")
    return "\n".join(parts)


def _training_section(run_dir: Path, summary: dict) -> str:
    history = layout.read_history(run_dir)
    train = [r for r in history if r.get("split") == "train"]
    evals = [r for r in history if r.get("split") == "validation"]
    rows = {
        "optimizer steps": summary.get("steps"),
        "best step": summary.get("best_step"),
        "evaluations": len(evals) or None,
        "first train loss": train[0].get("loss") if train else None,
        "last train loss": train[-1].get("loss") if train else None,
    }
    return _kv_table({k: v for k, v in rows.items() if v is not None})


def _modules_table(modules: Any) -> str:
    """Trainable/total parameters per module group (adapters, head, backbone), when training recorded them."""
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules) or not modules:
        return ""
    return _grid(
        ["module", "trainable", "total"], [[m.get("module"), m.get("trainable"), m.get("total")] for m in modules]
    )


def _plots_section(run_dir: Path) -> str:
    pngs = sorted((run_dir / "plots").rglob("*.png")) if (run_dir / "plots").is_dir() else []
    if not pngs:
        return "<p>(no plots)</p>"
    parts = []
    for png in pngs:
        title = html.escape(str(png.relative_to(run_dir / "plots").with_suffix("")))
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<h3>{title}</h3><img alt='{title}' src='data:image/png;base64,{b64}'>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, name: str | None = None) -> Path:
    """Writes ``run_dir/report.html`` from the files already in the run directory.

    Args:
        run_dir: a finished run or baseline directory (it has a ``summary.json``).
        name: the title's run name (default: the directory's name; a baseline is written under a temporary name).

    Returns:
        The report's path.

    Raises:
        TextuneError: ``run_dir`` has no ``summary.json`` (not a finished run).
    """
    from textune.report.compare import main_metric_value, peft_label

    run_dir = Path(run_dir)
    if not (run_dir / layout.SUMMARY).is_file():
        raise TextuneError(f"{run_dir}: no summary.json, so not a finished run; finish it or train it again")
    summary = _read_json(run_dir / layout.SUMMARY)
    if not summary:
        raise TextuneError(f"{run_dir}/summary.json: not valid JSON; the run directory is corrupted")
    recipe_text, recipe = _read_recipe(run_dir)
    manifest = _read_json(run_dir / layout.MANIFEST)
    name = name or run_dir.name
    metric, value = main_metric_value(summary)
    kind = "baseline" if summary.get("kind") == "baseline" else "fine-tuned run"
    overview = {
        "kind": kind,
        "task": summary.get("task"),
        "model": summary.get("model"),
        "description": summary.get("description"),
        "PEFT": peft_label(summary, recipe),
        f"validation {metric}": value,
        "created": manifest.get("created"),
        "seed": manifest.get("seed"),
    }
    overview = {k: v for k, v in overview.items() if v is not None or k != "description"}
    raw_params = summary.get("parameters") or {}
    params = {k: v for k, v in raw_params.items() if not isinstance(v, dict | list)}
    if "features" in summary:
        params["features"] = summary["features"]
    modules = raw_params.get("modules")
    env = {"platform": manifest.get("platform"), "git commit": manifest.get("git_commit")}
    env.update(manifest.get("versions") or {})
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>textune {esc(kind)} {esc(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(name)}</h1>",
        f"<p class='main'>{esc(metric)}: <b>{esc(_fmt(value))}</b> on validation</p>",
        _kv_table(overview),
        "<h2>Metrics</h2>",
        _metrics_section(summary),
        "<h2>Data</h2>",
        _data_section(run_dir, summary, recipe, manifest),
    ]
    if summary.get("kind") != "baseline":
        parts += ["<h2>Training</h2>", _training_section(run_dir, summary)]
    parts += [
        "<h2>Timing and resources</h2>",
        _kv_table({k: summary[k] for k in _TIMING if k in summary}, digits=2),
        "<h2>Parameters</h2>",
        _kv_table(params, digits=3),
        _modules_table(modules),
        "<h2>Plots</h2>",
        _plots_section(run_dir),
        "<h2>Environment</h2>",
        _kv_table({k: v for k, v in env.items() if v is not None}),
        "<h2>Recipe</h2>",
        f"<pre>{esc(recipe_text) or '(no recipe.yaml)'}</pre>",
        "</body></html>",
    ]
    return _atomic.write_text(run_dir / "report.html", "\n".join(parts) + "\n")
