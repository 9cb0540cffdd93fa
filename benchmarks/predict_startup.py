"""How long `textune predict` takes before its first batch: imports, run check, model load, reading, tokenizing.

    python benchmarks/predict_startup.py runs/NAME rows.csv

Runs the CLI's ``predict`` in this process with a clock started on this script's first line; the time is printed
when the first batch of rows is handed to the model (the interpreter's own start, ~0.05 s, is not counted).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="A finished run directory.")
    p.add_argument("input", help="Rows to predict (CSV/parquet/JSONL).")
    args = p.parse_args()

    import textune.models.infer as infer
    from textune.cli import main as textune_main

    real = infer.inference_batches
    seen: list[float] = []

    def first_batch(*a, **k):
        if not seen:
            seen.append(time.perf_counter() - T0)
            print(f"first batch after {seen[0]:.2f} s", file=sys.stderr, flush=True)
        return real(*a, **k)

    infer.inference_batches = first_batch
    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = ["textune", "predict", args.run, "--input", args.input, "--output", str(Path(tmp) / "out.csv")]
        try:
            textune_main()
        except SystemExit as exc:
            if exc.code:
                raise
    print(f"whole prediction {time.perf_counter() - T0:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
