"""Prediction at scale: ``textune predict`` on a 100k-row AG-News-like file, engine by engine, each command timed
whole (process start to the submission on disk) with the peak memory of its largest process.

    .venv/bin/python benchmarks/predict_scale.py --run runs/demo --rows 100000 --out runs/predict_scale

The input is ``--source``'s rows repeated to ``--rows`` (new unique ids, the text columns unchanged), written once
under ``--out``. The run is exported once with ``textune export --onnx --int8`` for the ONNX Runtime engines.
Variants (``--variants``): ``torch`` (the run's own precision where native: bf16 on a CPU with avx512_bf16),
``torch_fp32``, ``torch_2proc`` (``--processes 2``: torchrun, one thread each), ``onnx`` and ``onnx_int8``
(``--engine onnx|onnx-int8`` on the export). Each runs in a fresh process, one after another; prints a Markdown table
and writes ``results.json`` (with ``lscpu`` flags) under ``--out``. Predictions of every variant are compared with
the first variant's (share of rows with the same label).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
AG_NEWS = ROOT.parent / "shared" / "data" / "ag_news" / "train_12k.csv"
TEXTUNE = [sys.executable, "-m", "textune.cli"]


def variants(run: Path, export: Path) -> dict[str, list[str]]:
    return {
        "torch": ["predict", str(run)],
        "torch_fp32": ["predict", str(run), "--precision", "fp32"],
        "torch_2proc": ["predict", str(run), "--processes", "2"],
        "onnx": ["predict", str(export), "--engine", "onnx"],
        "onnx_int8": ["predict", str(export), "--engine", "onnx-int8"],
    }


def big_input(source: Path, rows: int, path: Path) -> Path:
    if path.is_file() and sum(1 for _ in open(path, "rb")) > rows:  # noqa: SIM115 - a line count
        return path
    df = pd.read_csv(source, keep_default_na=False)
    big = pd.concat([df] * -(-rows // len(df)), ignore_index=True).head(rows)
    big.insert(0, "id", [f"r{i:07d}" for i in range(len(big))])
    big = big.drop(columns=[c for c in ("label",) if c in big])
    big.to_csv(path, index=False)
    return path


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB, largest process) of ``textune <argv>`` in a fresh interpreter."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.call(sys.argv[1:]); wall = time.perf_counter() - t; "
        "print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, rc)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *TEXTUNE, *argv], capture_output=True, text=True)
    wall, rss, rc = out.stdout.strip().splitlines()[-1].split()
    if rc != "0":
        raise SystemExit(f"textune {' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return float(wall), float(rss), out.stderr


def _save(path: Path, results: dict) -> None:
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    report = {
        "command": " ".join(["python", "benchmarks/predict_scale.py", *sys.argv[1:]]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "bf16_flags": sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags),
        },
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a run directory (e.g. runs/demo after `make demo`)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--source", type=Path, default=AG_NEWS)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "predict_scale")
    ap.add_argument("--variants", default="torch,torch_2proc,onnx,onnx_int8")
    ap.add_argument("--chunk-rows", type=int, default=20_000)
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    data = big_input(args.source, args.rows, args.out / f"input_{args.rows}.csv")
    export = args.out / "export"
    chosen = args.variants.split(",")
    if any(v.startswith("onnx") for v in chosen) and not export.is_dir():
        subprocess.run([*TEXTUNE, "export", str(args.run), "--out", str(export), "--onnx", "--int8"], check=True)
    commands = variants(args.run, export)
    results: dict[str, dict] = {}
    first: pd.Series | None = None
    for name in chosen:
        output = args.out / f"pred_{name}.csv"
        output.unlink(missing_ok=True)
        argv = [*commands[name], "--input", str(data), "--output", str(output), "--chunk-rows", str(args.chunk_rows)]
        print(f"[predict_scale] {name}: textune {' '.join(argv)}", file=sys.stderr, flush=True)
        wall, rss, _ = timed(argv)
        labels = pd.read_csv(output, usecols=["label"])["label"]
        first = labels if first is None else first
        results[name] = {
            "rows": len(labels),
            "wall_s": round(wall, 1),
            "rows_per_s": round(len(labels) / wall, 1),
            "peak_rss_mib": round(rss),
            "same_label_as_first": round(float((labels == first).mean()), 4),
            "command": "textune " + " ".join(argv),
        }
        print(f"[predict_scale] {name}: {results[name]}", file=sys.stderr, flush=True)
        _save(args.out / "results.json", results)  # after each variant: a long benchmark keeps what it measured
    print(f"| variant | rows | wall s | rows/s | peak RSS MiB (largest process) | same label as {chosen[0]} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(
            f"| {name} | {r['rows']} | {r['wall_s']} | {r['rows_per_s']} | {r['peak_rss_mib']} | "
            f"{r['same_label_as_first']:.2%} |"
        )
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
