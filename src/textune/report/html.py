"""report.html: one self-contained page per run (plots inlined as data URIs, no external assets)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from textune import _atomic


def _table(rows: dict[str, object]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(run_dir: str | Path) -> Path:
    """Writes ``run_dir/report.html`` from the files already in the run directory."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    recipe = (run_dir / "recipe.yaml").read_text() if (run_dir / "recipe.yaml").is_file() else ""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>textune run {html.escape(run_dir.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}img{max-width:100%}</style>",
        f"</head><body><h1>Run {html.escape(run_dir.name)}</h1>",
    ]
    for split in ("validation", "test"):
        if summary.get(split):
            parts += [f"<h2>{split.title()} metrics</h2>", _table(summary[split])]
    timing = {
        k: v for k, v in summary.items() if k.endswith(("seconds", "per_s", "_mb")) or k in ("device", "precision")
    }
    parts += ["<h2>Timing and resources</h2>", _table(timing)]
    parts += ["<h2>Parameters</h2>", _table(summary.get("parameters", {}))]
    data = {k: summary[k] for k in ("train_rows", "validation_rows") if k in summary}
    parts += ["<h2>Data</h2>", _table(data)]
    parts.append("<h2>Plots</h2>")
    for png in sorted((run_dir / "plots").glob("*.png")):
        b64 = base64.b64encode(png.read_bytes()).decode()
        parts.append(
            f"<h3>{html.escape(png.stem)}</h3><img alt='{html.escape(png.stem)}' src='data:image/png;base64,{b64}'>"
        )
    parts += ["<h2>Recipe</h2>", f"<pre>{html.escape(recipe)}</pre>", "</body></html>"]
    return _atomic.write_text(run_dir / "report.html", "\n".join(parts))
