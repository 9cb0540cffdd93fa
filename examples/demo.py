"""`make demo`: fine-tune the bundled MiniLM on an AG News sample, write a submission and a report."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

import textune
from textune.cli import _setup_logging

HERE = Path(__file__).resolve().parent


def main() -> int:
    _setup_logging(verbose=False)
    recipe = textune.load_recipe(HERE / "ag_news_demo.yaml")
    run_dir = Path("runs") / "demo"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts fresh
    t0 = time.perf_counter()
    run_dir = textune.train(recipe, out=run_dir)
    predictor = textune.Predictor.load(run_dir)
    test = pd.read_csv(HERE / "data" / "ag_news_test_500.csv")
    submission = predictor.submission(test)
    submission.to_csv(run_dir / "submission.csv", index=False)
    elapsed = time.perf_counter() - t0

    summary = json.loads((run_dir / "summary.json").read_text())
    accuracy = (submission["label"] == test["label"]).mean()
    example = "Wall St. Bears Claw Back Into the Black"
    print(f"\ntest accuracy: {accuracy:.4f} on {len(test)} held-out AG News texts (4 classes, chance 0.25)")
    print(f"validation accuracy: {summary['validation']['accuracy']:.4f}")
    train_s, rate = summary["train_seconds"], summary["train_samples_per_s"]
    print(f"train: {train_s:.0f} s ({rate:.1f} samples/s); train + predict + report: {elapsed:.0f} s")
    print(f"classify({example!r}) -> {textune.classify(predictor, example)!r}")
    print(f"run directory: {run_dir.resolve()}  (report.html, submission.csv, plots/, model/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
