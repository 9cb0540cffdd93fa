"""report.html: one self-contained page per run or baseline, readable offline and worth keeping open.

Everything is inline: the CSS in a ``<style>`` block, every plot as a ``data:image/png;base64`` URI, no scripts,
fonts or links, so the file opens from a USB stick or an air-gapped machine exactly as it was written.
Regenerate it with ``textune report runs/NAME`` (after adding baselines beside a run, to show them in its headline).

Reading order: the headline (main metric on validation, its direction, the best baseline beside the run and the
difference), the metrics, the curves, the errors (confusion matrix or residuals, per-class table), the data, training,
timing and parameters, the folds or members of a parent run, then the environment and the recipe (collapsed).

Every number copied from a ``summary.json`` carries ``data-metric`` (its dotted key), ``data-value`` (the value at
full precision) and, when it is not this directory's summary, ``data-run`` (the directory holding that summary,
relative to the page): tests check the page against the files through these hooks, and so can anyone's script.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textune import _atomic
from textune.errors import TextuneError
from textune.run import layout

CSS = (
    "*{box-sizing:border-box}"
    "body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;max-width:76em;margin:0 auto;"
    "padding:1.2em 1.5em 3em;color:#1f2328;background:#fff}"
    "h1{font-size:1.7em;margin:.2em 0;overflow-wrap:anywhere}"
    "h2{font-size:1.2em;margin:1.8em 0 .6em;padding-bottom:.25em;border-bottom:1px solid #d8dee4}"
    "h3{font-size:1em;margin:.2em 0 .4em;color:#424a53}"
    "p{margin:.4em 0}.muted{color:#59636e}.small{font-size:.87em}"
    ".meta{display:flex;flex-wrap:wrap;gap:.3em .5em;margin:.3em 0 1em;padding:0;list-style:none}"
    ".meta li{background:#f6f8fa;border:1px solid #d8dee4;border-radius:1em;padding:.05em .7em;font-size:.87em;"
    "overflow-wrap:anywhere}"
    ".badge{display:inline-block;background:#ddf4ff;color:#0550ae;border-radius:1em;padding:0 .6em;"
    "font-size:.8em;font-weight:600;vertical-align:middle}.badge.base{background:#eaeef2;color:#424a53}"
    ".cards{display:flex;flex-wrap:wrap;gap:.8em;margin:.6em 0}"
    ".card{border:1px solid #d0d7de;border-radius:8px;padding:.6em 1.1em;min-width:13em;flex:0 1 auto}"
    ".card .k{font-size:.8em;text-transform:uppercase;letter-spacing:.04em;color:#59636e}"
    ".card .v{font-size:2em;font-weight:650;font-variant-numeric:tabular-nums;line-height:1.2}"
    ".card.main{border-color:#0969da;box-shadow:0 0 0 1px #0969da inset}"
    ".card .n{font-size:.85em;color:#59636e;overflow-wrap:anywhere;max-width:22em}"
    ".better{color:#1a7f37}.worse{color:#cf222e}"
    "table{border-collapse:collapse;margin:.3em 0 .8em;font-size:.92em}"
    # break-word keeps a column at least one word wide; .wrap (paths, hashes, free text) may break anywhere,
    # so a long path narrows its own column instead of pushing the table past its box
    "th,td{border-bottom:1px solid #e5e8eb;padding:.28em .7em;text-align:left;vertical-align:top;"
    "overflow-wrap:break-word}.wrap{overflow-wrap:anywhere}.nowrap{white-space:nowrap}"
    "thead th{background:#f6f8fa;border-bottom:1px solid #d0d7de;white-space:nowrap}"
    "tbody th{font-weight:500;color:#424a53}"
    "td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    "tr.hl td,tr.hl th{background:#fff8c5}tr.sum td,tr.sum th{border-top:2px solid #d0d7de;font-weight:600}"
    "tr.baseline td,tr.baseline th{color:#59636e}"
    ".scroll{overflow-x:auto;max-width:100%}"
    ".grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(26em,1fr));gap:1em 2em;align-items:start}"
    ".grid3{display:grid;grid-template-columns:repeat(auto-fit,minmax(19em,1fr));gap:1em 2em;align-items:start}"
    ".grid>*,.grid3>*{min-width:0}"
    "figure{margin:0}figure img{display:block;max-width:100%;height:auto;border:1px solid #eaeef2;"
    "border-radius:4px}figcaption{font-size:.85em;color:#59636e;margin-top:.2em;overflow-wrap:anywhere}"
    "details{margin:.6em 0;border:1px solid #d8dee4;border-radius:6px;padding:.4em .8em}"
    "summary{cursor:pointer;font-weight:600}"
    "pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em;max-width:100%}"
    "footer{margin-top:2.5em;font-size:.85em;color:#59636e}"
)
# summary.json keys shown under "Timing and resources", in this order when present
_TIMING = (
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
# plots/ files placed in their own sections; every other PNG goes under "More plots"
_CURVES = ("loss.png", "metrics.png")
_ERRORS = ("confusion_matrix.png", "pred_vs_true.png", "residuals.png")
# sub-directories of a parent run (cross-validation folds, ensemble members) listed in one table each
_CHILDREN = ("folds", "members")
_TIMESTAMP = re.compile(r"-\d{8}-\d{6}$")  # the suffix new_run_dir gives a run named after its recipe
esc = html.escape
_PRECISION = {"no": "fp32"}  # Accelerate's name for no mixed precision


@dataclass
class _Run:
    """What the page is built from: the run directory's files, read once."""

    run_dir: Path
    name: str
    summary: dict
    recipe_text: str = ""
    recipe: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    task_state: dict = field(default_factory=dict)
    preds: dict[str, Any] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.summary.get("kind") == "baseline"


# ------------------------------------------------------------------------------------------------ formatting


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def hook(key: str | None, value: Any, run: str | None = None) -> str:
    """The attributes that tie a shown number to ``key`` in a summary.json (``run``: that summary's directory,
    relative to the page; absent: the page's own). Nothing for values that are not finite numbers."""
    if not key or not is_number(value):
        return ""
    full = repr(float(value)) if isinstance(value, float) else str(int(value))
    attrs = f" data-metric='{esc(key)}' data-value='{full}'"
    return attrs + (f" data-run='{esc(run)}'" if run else "")


def td(v: Any, key: str | None = None, run: str | None = None, digits: int = 4, wrap: bool = False) -> str:
    """A cell: numbers right-aligned (and hooked when ``key`` is given); ``wrap``: text that may break anywhere."""
    numeric = is_number(v) or (isinstance(v, float) and math.isnan(v))
    cls = " class='num'" if numeric else (" class='wrap'" if wrap else "")
    return f"<td{cls}{hook(key, v, run)}>{esc(fmt(v, digits))}</td>"


def _kv_table(rows: list[tuple[str, Any, str | None]], digits: int = 4) -> str:
    """A two-column table; each row is ``(label, value, summary key or None)``."""
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return "<p class='muted'>(none recorded)</p>"
    body = "".join(f"<tr><th>{esc(label)}</th>{td(v, key, digits=digits, wrap=True)}</tr>" for label, v, key in rows)
    return f"<table><tbody>{body}</tbody></table>"


def grid_table(header: list[str], rows: list[str], scroll: bool = False, num: Iterable[int] = ()) -> str:
    """``rows``: ready ``<tr>`` strings. ``scroll``: wide tables scroll inside their box, never the page.
    ``num``: indices of the columns that hold numbers (their headers align right, as the numbers do)."""
    num = set(num)
    head = "".join(f"<th{' class=num' if i in num else ''}>{esc(h)}</th>" for i, h in enumerate(header))
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f"<div class='scroll'>{table}</div>" if scroll else table


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    return raw if isinstance(raw, dict) else {}


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


def _predictions(run_dir: Path) -> dict[str, Any]:
    """The saved prediction files by split: row counts and true labels, even if the data files moved since."""
    import pandas as pd

    out: dict[str, Any] = {}
    for split in ("validation", "test"):
        path = layout.prediction_path(run_dir, split)
        if not path.is_file():
            continue
        try:
            out[split] = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
    return out


def direction(metric: str, task: str | None, recorded: str | None = None) -> str | None:
    """``"max"``, ``"min"``, or None when neither the run nor its task says."""
    if recorded in ("min", "max"):
        return recorded
    from textune.tasks import TASKS, get_task

    if task not in TASKS:
        return None
    try:
        return get_task(task).direction(metric)
    except TextuneError:
        return None


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


def _direction_words(d: str | None) -> str:
    return {"max": "higher is better", "min": "lower is better"}.get(d or "", "")


# ------------------------------------------------------------------------------------------------ headline


def _split_identity(run: _Run) -> tuple | None:
    """What makes two directories' validation rows the same: the data files' hashes, the seed and the split."""
    hashes = run.manifest.get("data_sha256")
    if not hashes:
        return None
    data = run.recipe.get("data") or {}
    # a cross-validated directory is scored on pooled out-of-fold rows, a single run on its held-out rows
    cv = run.recipe.get("cv") or {}
    folds = (cv.get("folds"), cv.get("seed"), cv.get("group")) if cv.get("folds") else None
    return (json.dumps(hashes, sort_keys=True), run.manifest.get("seed"), data.get("valid_fraction"), folds)


def _names_match(run_name: str, baseline_name: str) -> bool:
    """``ag_news-baseline-tfidf`` belongs to ``ag_news`` and to ``ag_news-20250101-120000`` (the default name)."""
    stem, sep, _ = baseline_name.rpartition("-baseline-")
    return bool(sep) and _TIMESTAMP.sub("", run_name) == stem


def baselines_beside(run: _Run) -> list[tuple[Path, dict]]:
    """Baseline directories in the run's parent folder evaluated on the same task and data split."""
    metric = run.summary.get("main_metric")
    ident = _split_identity(run)
    found = []
    parent = run.run_dir.parent
    for d in sorted(parent.iterdir()) if parent.is_dir() else []:
        if d == run.run_dir or d.name.startswith(".") or not d.is_dir():
            continue
        summary = _read_json(d / layout.SUMMARY)
        if summary.get("kind") != "baseline" or summary.get("task") != run.summary.get("task"):
            continue
        if not is_number((summary.get("validation") or {}).get(metric)):
            continue
        other = _Run(d, d.name, summary, *_read_recipe(d), manifest=_read_json(d / layout.MANIFEST))
        # scored the same way: pooled out-of-fold rows (CV) or one held-out split, never one against the other
        same_scoring = (run.summary.get("kind") == "cv") == ("cv" in summary)
        if not same_scoring:
            continue
        if (ident is not None and _split_identity(other) == ident) or _names_match(run.run_dir.name, d.name):
            found.append((d, summary))
    return found


def _card(label: str, value: Any, key: str | None, note: str = "", run: str | None = None, cls: str = "") -> str:
    shown = f"<div class='v'{hook(key, value, run)}>{esc(fmt(value))}</div>"
    note_html = f"<div class='n'>{note}</div>" if note else ""
    return f"<div class='card {cls}'><div class='k'>{esc(label)}</div>{shown}{note_html}</div>"


def _headline(run: _Run) -> str:
    metric, value = main_metric_value(run.summary)
    task = run.summary.get("task")
    dirn = direction(metric, task, run.summary.get("metric_direction"))
    cards = [_card(f"{metric} · validation", value, f"validation.{metric}", esc(_direction_words(dirn)), cls="main")]
    test = (run.summary.get("test") or {}).get(metric)
    if is_number(test):
        cards.append(_card(f"{metric} · test", test, f"test.{metric}"))
    if not run.is_baseline:
        cards += _baseline_cards(run, metric, value, dirn)
    return "<div class='cards'>" + "".join(cards) + "</div>"


def _baseline_cards(run: _Run, metric: str, value: float, dirn: str | None) -> list[str]:
    found = baselines_beside(run)
    if not found:
        where = esc(str(run.run_dir.parent))
        hint = f"<code>textune baseline RECIPE --out {where}</code> writes one, <code>textune report</code> shows it"
        return [
            f"<div class='card'><div class='k'>baseline</div><div class='n'>none beside this run; {hint}</div></div>"
        ]
    sign = -1 if dirn == "min" else 1
    best_dir, best = max(found, key=lambda f: sign * f[1]["validation"][metric])
    base = best["validation"][metric]
    others = f"best of {len(found)} beside this run" if len(found) > 1 else "the one beside this run"
    note = f"{esc(best_dir.name)}: {esc(str(best.get('description') or best.get('model') or ''))} ({others})"
    cards = [_card(f"best baseline · {metric}", base, f"validation.{metric}", note, run=f"../{best_dir.name}")]
    if is_number(value):
        diff = value - base
        verdict, cls = "tied with the baseline", ""
        if diff and dirn:
            good = sign * diff > 0
            verdict, cls = ("better" if good else "worse") + " than the baseline", "better" if good else "worse"
        shown = f"<div class='v {cls}'>{diff:+.4f}</div><div class='n'>{esc(verdict)}</div>"
        cards.append(f"<div class='card'><div class='k'>difference</div>{shown}</div>")
    return cards


def _meta(run: _Run) -> str:
    s, m = run.summary, run.manifest
    kind = "<span class='badge base'>baseline</span>" if run.is_baseline else "<span class='badge'>fine-tuned</span>"
    items = [
        ("task", s.get("task")),
        ("model", s.get("model")),
        ("baseline", s.get("description")),
        ("PEFT", None if run.is_baseline else peft_label(s, run.recipe)),
        ("device", s.get("device") or m.get("device")),
        ("precision", _PRECISION.get(prec := s.get("precision") or m.get("precision"), prec)),
        ("seed", m.get("seed")),
        ("created", m.get("created")),
    ]
    chips = "".join(f"<li><b>{esc(k)}</b> {esc(fmt(v))}</li>" for k, v in items if v is not None)
    return f"<h1>{esc(run.name)} {kind}</h1><ul class='meta'>{chips}</ul>"


# ------------------------------------------------------------------------------------------------ sections


def _metrics_section(run: _Run) -> str:
    splits = [s for s in ("validation", "test") if run.summary.get(s)]
    if not splits:
        return "<p class='muted'>(no labelled split was evaluated)</p>"
    main = run.summary.get("main_metric")
    task = run.summary.get("task")
    names = list(dict.fromkeys(k for s in splits for k in run.summary[s]))
    rows = []
    for n in names:
        arrow = {"max": "↑", "min": "↓"}.get(direction(n, task) or "", "")
        cells = "".join(td(run.summary[s].get(n), f"{s}.{n}") for s in splits)
        rows.append(f"<tr{' class=hl' if n == main else ''}><th>{esc(n)}</th><td>{arrow}</td>{cells}</tr>")
    return grid_table(["metric", "better", *splits], rows, scroll=True, num=range(2, 2 + len(splits)))


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def img(data: bytes, alt: str) -> str:
    """An inline PNG; its pixel size is declared so the page does not reflow while it decodes."""
    size = _png_size(data)
    dims = f" width='{size[0]}' height='{size[1]}'" if size else ""
    return f"<img alt='{esc(alt)}'{dims} src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}'>"


def _figure(run_dir: Path, png: Path, caption: bool = False) -> str:
    """``caption``: the file's path under plots/, for plots whose own title may not say what they are."""
    title = str(png.relative_to(run_dir / layout.PLOTS).with_suffix(""))
    cap = f"<figcaption>{esc(title)}</figcaption>" if caption else ""
    return f"<figure>{img(png.read_bytes(), title)}{cap}</figure>"


def _plots(run_dir: Path) -> list[Path]:
    plots = run_dir / layout.PLOTS
    return sorted(plots.rglob("*.png")) if plots.is_dir() else []


def _top_plots(run: _Run, names: tuple[str, ...]) -> list[Path]:
    """The named plots directly in plots/, in the order of ``names``."""
    return [p for n in names if (p := run.run_dir / layout.PLOTS / n).is_file()]


def _per_class_rows(run: _Run) -> list[list[Any]] | None:
    """label, precision, recall, F1, support on validation: from per_label.csv (multilabel runs write it beside
    their plots) or from the true and predicted columns of predictions/validation.csv when they hold labels."""
    import pandas as pd

    per_label = run.run_dir / layout.PLOTS / "per_label.csv"
    if per_label.is_file():
        try:
            t = pd.read_csv(per_label)
            cols = [c for c in ("label", "precision", "recall", "f1", "support", "threshold") if c in t.columns]
            return [cols, *t[cols].values.tolist()]
        except (OSError, ValueError, pd.errors.ParserError):
            return None
    labels = [str(x) for x in run.task_state.get("labels") or []]
    df = run.preds.get("validation")
    col = next((c for c in df.columns if f"pred_{c}" in df.columns), None) if df is not None else None
    if not labels or col is None or not set(df[col]) | set(df[f"pred_{col}"]) <= set(labels):
        return None
    true, pred = df[col], df[f"pred_{col}"]
    rows: list[list[Any]] = [["label", "precision", "recall", "f1", "support"]]
    for lab in labels:
        tp = int(((true == lab) & (pred == lab)).sum())
        n_pred, n_true = int((pred == lab).sum()), int((true == lab).sum())
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_true if n_true else 0.0
        rows.append([lab, p, r, 2 * p * r / (p + r) if p + r else 0.0, n_true])
    return rows


def _per_class_table(rows: list[list[Any]]) -> str:
    header, body = rows[0], rows[1:]
    trs = [f"<tr><th>{esc(str(r[0]))}</th>{''.join(td(v) for v in r[1:])}</tr>" for r in body]
    if body and header[1:4] == ["precision", "recall", "f1"]:
        # the unweighted mean, as the *_macro metrics average the classes
        means = [sum(float(r[i]) for r in body) / len(body) for i in (1, 2, 3)]
        total = sum(int(r[4]) for r in body)
        trs.append(f"<tr class='sum'><th>macro average</th>{''.join(td(v) for v in means)}{td(total)}</tr>")
    return grid_table(header, trs, scroll=True, num=range(1, len(header)))


def _errors_section(run: _Run) -> str:
    figures = [_figure(run.run_dir, p) for p in _top_plots(run, _ERRORS)]
    rows = _per_class_rows(run)
    items = list(figures)
    if rows is not None and len(rows) > 1:
        items.append("<div><h3>Per class (validation)</h3>" + _per_class_table(rows) + "</div>")
    if not items:
        return ""
    return "<h2>Errors on validation</h2><div class='grid'>" + "".join(items) + "</div>"


def _curves_section(run: _Run) -> str:
    figures = [_figure(run.run_dir, p) for p in _top_plots(run, _CURVES)]
    return "<h2>Curves</h2><div class='grid'>" + "".join(figures) + "</div>" if figures else ""


def _more_plots_section(run: _Run) -> str:
    placed = {*_CURVES, *_ERRORS}
    plots_dir = run.run_dir / layout.PLOTS
    rest = [p for p in _plots(run.run_dir) if p.parent != plots_dir or p.name not in placed]
    if not rest:
        return ""
    return (
        "<h2>More plots</h2><div class='grid'>"
        + "".join(_figure(run.run_dir, p, caption=True) for p in rest)
        + "</div>"
    )


def _data_section(run: _Run) -> str:
    data = run.recipe.get("data") or {}
    hashes = run.manifest.get("data_sha256") or {}
    frac = data.get("valid_fraction")
    seed = run.manifest.get("seed", "-")
    held_out = f"held out from train ({frac:.0%}, seed {seed})" if is_number(frac) else "held out from train"
    files = {"train": data.get("train"), "validation": data.get("validation") or held_out, "test": data.get("test")}
    rows = []
    for split, file in files.items():
        if file is None:
            continue
        key = f"{split}_rows" if split != "test" else None
        n = run.summary.get(key) if key else None
        if n is None and split in run.preds:
            n, key = len(run.preds[split]), None
        sha = (hashes.get(split) or "-")[:12]
        rows.append(f"<tr><th>{esc(split)}</th>{td(str(file), wrap=True)}{td(n, key)}<td><code>{sha}</code></td></tr>")
    split_table = grid_table(["split", "file", "rows", "sha256"], rows, num=[2])
    settings = [
        ("text", data.get("text"), None),
        ("text pair", data.get("text_pair"), None),
        ("target column" if data.get("target") else "label column", data.get("target") or data.get("label"), None),
        ("id column", data.get("id"), None),
        ("max_length (tokens)", data.get("max_length"), None),
        ("truncation", data.get("truncation"), None),
    ]
    left = f"<div><h3>Splits</h3>{split_table}{_kv_table(settings)}</div>"
    return f"<div class='grid'>{left}{_label_counts(run, data)}</div>"


def _target_summary(run: _Run, col: str) -> str:
    """A numeric target: its training mean and spread (task.json) and its range per evaluated split."""
    import pandas as pd

    rows = []
    for split, df in run.preds.items():
        values = pd.to_numeric(df[col], errors="coerce").dropna() if col in df.columns else pd.Series([], dtype=float)
        if len(values):
            stats = (float(values.mean()), float(values.min()), float(values.median()), float(values.max()))
            rows.append(f"<tr><th>{esc(split)}</th>{''.join(td(v) for v in stats)}</tr>")
    mean, std = run.task_state.get("mean"), run.task_state.get("std")
    note = f"<p class='small muted'>training rows: mean {fmt(mean)}, std {fmt(std)}</p>" if is_number(mean) else ""
    header = ["split", "mean", "min", "median", "max"]
    table = grid_table(header, rows, scroll=True, num=range(1, 5)) if rows else ""
    return f"<div><h3>Target {esc(col)}</h3>{table}{note}</div>"


def _label_counts(run: _Run, data: dict) -> str:
    """True labels per evaluated split, from the saved predictions (so the page is right even if the data moved)."""
    labels = [str(x) for x in run.task_state.get("labels") or []]
    col = data.get("label")
    counted = {s: df[col].value_counts() for s, df in run.preds.items() if col and col in df.columns}
    if not labels:
        target = run.task_state.get("target")
        return _target_summary(run, target) if isinstance(target, str) else ""
    if not counted or not any(set(c.index) <= set(labels) for c in counted.values()):
        return f"<div><h3>Labels</h3><p>{esc(', '.join(labels))}</p></div>"
    rows = []
    for lab in labels:
        cells = "".join(td(int(c.get(lab, 0))) for c in counted.values())
        rows.append(f"<tr><th>{esc(lab)}</th>{cells}</tr>")
    totals = "".join(td(int(c.sum())) for c in counted.values())
    rows.append(f"<tr class='sum'><th>total</th>{totals}</tr>")
    table = grid_table(["label", *counted], rows, scroll=True, num=range(1, 1 + len(counted)))
    return f"<div><h3>True labels per evaluated split</h3>{table}</div>"


def _training_table(run: _Run) -> str:
    history = layout.read_history(run.run_dir)
    train = [r for r in history if r.get("split") == "train" and is_number(r.get("loss"))]
    evals = [r for r in history if r.get("split") == "validation"]
    batching = run.summary.get("batching") or {}
    rows = [
        ("optimizer steps", run.summary.get("steps"), "steps"),
        ("best step", run.summary.get("best_step"), "best_step"),
        ("evaluations", len(evals) or None, None),
        ("first train loss", train[0]["loss"] if train else None, None),
        ("last train loss", train[-1]["loss"] if train else None, None),
        ("rows per step", batching.get("rows_per_step"), "batching.rows_per_step"),
        ("micro-batch size", batching.get("micro_batch_size"), "batching.micro_batch_size"),
        ("processes", run.summary.get("processes"), "processes"),
    ]
    return "<div><h3>Training</h3>" + _kv_table(rows) + "</div>"


def _timing_table(run: _Run) -> str:
    rows = [(k.replace("_", " "), run.summary[k], k) for k in _TIMING if k in run.summary]
    return "<div><h3>Timing and resources</h3>" + _kv_table(rows, digits=2) + "</div>"


def _parameters_table(run: _Run) -> str:
    raw = run.summary.get("parameters") or {}
    rows = [(k.replace("_", " "), v, f"parameters.{k}") for k, v in raw.items() if not isinstance(v, dict | list)]
    if "features" in run.summary:
        rows.append(("features", run.summary["features"], "features"))
    modules = raw.get("modules")
    extra = ""
    if isinstance(modules, list) and modules and all(isinstance(m, dict) for m in modules):
        # trainable/total per module group (adapters, head, backbone), as training recorded them
        trs = [
            f"<tr><th>{esc(str(m.get('module')))}</th>"
            f"{td(m.get('trainable'), f'parameters.modules.{i}.trainable')}"
            f"{td(m.get('total'), f'parameters.modules.{i}.total')}</tr>"
            for i, m in enumerate(modules)
        ]
        extra = grid_table(["module", "trainable", "total"], trs, num=[1, 2])
    return "<div><h3>Parameters</h3>" + _kv_table(rows, digits=3) + extra + "</div>"


def _children_section(run: _Run) -> str:
    """A table per folds/ or members/ sub-folder (cross-validation, ensembles): one row per sub-directory with a
    summary.json, its validation metrics, rows and training time, then the mean and spread of each metric."""
    parts = []
    for sub in _CHILDREN:
        folder = run.run_dir / sub
        kids = [(d, _read_json(d / layout.SUMMARY)) for d in sorted(folder.iterdir())] if folder.is_dir() else []
        kids = [(d, s) for d, s in kids if s]
        if not kids:
            continue
        names = list(dict.fromkeys(k for _, s in kids for k in (s.get("validation") or {})))
        extra = ("train_rows", "validation_rows", "train_seconds")
        rows = []
        for d, s in kids:
            rel = f"{sub}/{d.name}"
            cells = "".join(td((s.get("validation") or {}).get(n), f"validation.{n}", rel) for n in names)
            cells += "".join(td(s.get(k), k, rel, digits=2) for k in extra)
            rows.append(f"<tr><th>{esc(d.name)}</th>{cells}</tr>")
        if len(kids) > 1:
            rows += _spread_rows(kids, names, len(extra))
        header = [sub[:-1], *names, "train rows", "validation rows", "train s"]
        title = f"<h2>{esc(sub.capitalize())} <span class='muted small'>(validation metrics)</span></h2>"
        parts.append(title + grid_table(header, rows, scroll=True, num=range(1, len(header))))
    return "".join(parts)


def _spread_rows(kids: list[tuple[Path, dict]], names: list[str], blanks: int) -> list[str]:
    import statistics

    out = []
    for label, stat in (("mean", statistics.fmean), ("std", statistics.stdev)):
        cells = ""
        for n in names:
            values = [v for _, s in kids if is_number(v := (s.get("validation") or {}).get(n))]
            cells += td(stat(values) if len(values) > 1 else None)
        out.append(f"<tr class='{'sum' if label == 'mean' else ''}'><th>{label}</th>{cells}{'<td></td>' * blanks}</tr>")
    return out


def _collapsed(run: _Run) -> str:
    m = run.manifest
    env = [("platform", m.get("platform"), None), ("git commit", m.get("git_commit"), None)]
    env += [(k, v, None) for k, v in (m.get("versions") or {}).items()]
    recipe = esc(run.recipe_text) or "(no recipe.yaml)"
    return (
        f"<details><summary>Environment</summary>{_kv_table(env)}</details>"
        f"<details><summary>Recipe (recipe.yaml, every default filled in)</summary><pre>{recipe}</pre></details>"
    )


def _load(run_dir: Path, name: str | None) -> _Run:
    if not (run_dir / layout.SUMMARY).is_file():
        raise TextuneError(f"{run_dir}: no summary.json, so not a finished run; finish it or train it again")
    summary = _read_json(run_dir / layout.SUMMARY)
    if not summary:
        raise TextuneError(f"{run_dir}/summary.json: not valid JSON; the run directory is corrupted")
    recipe_text, recipe = _read_recipe(run_dir)
    return _Run(
        run_dir,
        name or run_dir.name,
        summary,
        recipe_text,
        recipe,
        manifest=_read_json(run_dir / layout.MANIFEST),
        task_state=_read_json(layout.task_state_path(run_dir)),
        preds=_predictions(run_dir),
    )


def render(run: _Run) -> str:
    """The page's HTML."""
    from textune._version import __version__

    kind = "baseline" if run.is_baseline else "fine-tuned run"
    details = [_training_table(run)] if not run.is_baseline else []
    details += [_timing_table(run), _parameters_table(run)]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(run.name)}: textune {kind}</title><style>{CSS}</style></head><body>",
        _meta(run),
        _headline(run),
        "<h2>Metrics</h2>",
        _metrics_section(run),
        _curves_section(run),
        _errors_section(run),
        _more_plots_section(run),
        "<h2>Data</h2>",
        _data_section(run),
        "<h2>Timing and parameters</h2>" if run.is_baseline else "<h2>Training, timing and parameters</h2>",
        "<div class='grid3'>" + "".join(details) + "</div>",
        _children_section(run),
        "<h2>Environment and recipe</h2>",
        _collapsed(run),
        f"<footer>Written by textune {esc(__version__)} from the files in this directory; "
        f"<code>textune report {esc(str(run.run_dir.parent / run.name))}</code> writes it again.</footer>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


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
    run_dir = Path(run_dir)
    run = _load(run_dir, name)
    return _atomic.write_text(run_dir / layout.REPORT, render(run))
