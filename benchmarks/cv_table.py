"""The per-task table of issue 15: each baseline, the single fine-tune and the ensemble, K-fold CV mean +- std on the
same folds, with the wall time of every command, on the data in ../shared/data.

Each step is an ordinary textune command run in its own process, one after another (never two at once: on 2 cores
they would slow each other down), timed from outside:

    textune baseline recipes/R.yaml --folds K --kind tfidf --kind gbdt --kind embedding --out OUT/R
    textune train    recipes/R.yaml --folds K --out OUT/R/finetune
    textune ensemble OUT/R/finetune OUT/R/R-baseline-*-cvK --method greedy|stack --out OUT/R/ensemble-METHOD

    .venv/bin/python benchmarks/cv_table.py run --folds 5 --out runs/cv_table [--recipes ag_news,cefr_levels]
    .venv/bin/python benchmarks/cv_table.py table --out runs/cv_table      # the markdown table, from the summaries

A step whose output already holds a finished summary is not run again (delete it to re-measure); its recorded time
stays in OUT/times.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTUNE = [sys.executable, "-m", "textune.cli"]
RECIPES = ("ag_news", "cefr_levels", "llm_preference", "product_price")
KINDS = ("tfidf", "gbdt", "embedding")
METHODS = ("greedy", "stack")  # Caruana selection / non-negative stacking, both fitted on OOF rows


def _run(cmd: list[str], times: dict, key: str, out: Path, done: Path) -> None:
    if (done / "summary.json").is_file() and key in times:
        print(f"= {key}: done ({times[key]:.0f} s)", flush=True)
        return
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{key}: exit code {proc.returncode}")
    times[key] = round(time.perf_counter() - t0, 1)
    (out / "times.json").write_text(json.dumps(times, indent=1))


def run(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    k = str(args.folds)
    for name in args.recipes.split(","):
        recipe, task_dir = ROOT / "recipes" / f"{name}.yaml", out / name
        for kind in KINDS:
            done = task_dir / f"{name}-baseline-{kind}-cv{k}"
            cmd = [*TEXTUNE, "baseline", str(recipe), "--folds", k, "--kind", kind, "--out", str(task_dir)]
            _run(cmd, times, f"{name}/{kind}", out, done)
        finetune = task_dir / "finetune"
        _run(
            [*TEXTUNE, "train", str(recipe), "--folds", k, "--out", str(finetune)],
            times,
            f"{name}/finetune",
            out,
            finetune,
        )
        members = [finetune] + [task_dir / f"{name}-baseline-{kind}-cv{k}" for kind in KINDS]
        for method in METHODS:
            ensemble = task_dir / f"ensemble-{method}"
            cmd = [*TEXTUNE, "ensemble", *map(str, members), "--method", method, "--out", str(ensemble)]
            _run(cmd, times, f"{name}/ensemble-{method}", out, ensemble)
    table(args)


def _cell(summary: dict, metric: str) -> tuple[str, float | None, float | None]:
    cv = (summary.get("cv") or {}).get(metric) or {}
    mean, std = cv.get("mean"), cv.get("std")
    if mean is None:
        return "n/a", None, None
    return f"{mean:.4f} +- {std:.4f}", mean, std


def _short(member: str, name: str) -> str:
    """'ag_news-baseline-tfidf-cv5' -> 'tfidf'."""
    return re.sub(r"-cv\d+$", "", member.removeprefix(f"{name}-baseline-"))


def table(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}
    flags = (
        sorted(set(re.findall(r"avx512_bf16|amx_bf16", Path("/proc/cpuinfo").read_text())))
        if os.path.exists("/proc/cpuinfo")
        else []
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"bf16 flags: {flags or 'none'}\n"
    )
    for name in args.recipes.split(","):
        task_dir = out / name
        if not (task_dir / "finetune" / "summary.json").is_file():
            continue
        finetune = json.loads((task_dir / "finetune" / "summary.json").read_text())
        metric, direction = finetune["main_metric"], finetune["metric_direction"]
        rows = [
            (f"baseline: {kind}", task_dir / f"{name}-baseline-{kind}-cv{finetune['folds']}", f"{name}/{kind}")
            for kind in KINDS
        ]
        rows += [("fine-tune (one model per fold)", task_dir / "finetune", f"{name}/finetune")]
        rows += [(f"ensemble ({m}, on OOF)", task_dir / f"ensemble-{m}", f"{name}/ensemble-{m}") for m in METHODS]
        print(
            f"### {name}: {metric} ({'higher' if direction == 'max' else 'lower'} is better), "
            f"{finetune['folds']}-fold CV, {finetune['train_rows']} rows\n"
        )
        print(f"| contender | {metric} mean +- std over folds | pooled OOF | wall s |")
        print("|---|---|---|---|")
        cells = {}
        for label, path, key in rows:
            if not (path / "summary.json").is_file():
                continue
            summary = json.loads((path / "summary.json").read_text())
            text, mean, std = _cell(summary, metric)
            cells[label] = (mean, std)
            pooled = (summary.get("validation") or {}).get(metric)
            weights = ""
            if label.startswith("ensemble"):
                weights = (
                    " (weights: "
                    + ", ".join(
                        f"{_short(Path(m['path']).name, name)} {m['weight']:.2f}"
                        for m in summary["members"]
                        if m["weight"] > 0
                    )
                    + ")"
                )
            print(f"| {label}{weights} | {text} | {pooled:.4f} | {times.get(key, float('nan')):.0f} |")
        sign = 1 if direction == "max" else -1
        base = [cells[f"baseline: {k}"] for k in KINDS if cells.get(f"baseline: {k}", (None,))[0] is not None]
        print()
        for m in METHODS:
            ens = cells.get(f"ensemble ({m}, on OOF)", (None,))[0]
            if not base or ens is None:
                continue
            best_mean, best_std = max(base, key=lambda c: sign * c[0])
            margin = sign * (ens - best_mean)
            print(
                f"ensemble ({m}) vs strongest baseline: {margin:+.4f} "
                f"({margin / best_std if best_std else float('inf'):+.2f} of its std); "
                f"goal > 1 std: {'met' if margin > best_std else 'NOT met'}"
            )
        tfidf, single = cells.get("baseline: tfidf"), cells.get("fine-tune (one model per fold)")
        if tfidf and single and tfidf[0] is not None and single[0] is not None:
            beats = sign * (single[0] - tfidf[0]) > 0
            print(f"fine-tune vs TF-IDF: {sign * (single[0] - tfidf[0]):+.4f}; goal: {'met' if beats else 'NOT met'}")
        print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["run", "table"])
    p.add_argument("--out", default="runs/cv_table")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--recipes", default=",".join(RECIPES))
    args = p.parse_args()
    run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
