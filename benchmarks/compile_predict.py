"""Does torch.compile pay for prediction? A run's Predictor eager, then compiled (dynamic shapes), on the same rows.

    python benchmarks/compile_predict.py runs/NAME rows.csv [--repeats 2]

Prints each pass's time: two eager passes, the first compiled pass (compiling included), then steady compiled
passes, and whether the compiled predictions equal the eager ones. The break-even row count is the compile time over
the per-row time saved.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from textune.predict import Predictor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("rows", help="CSV with the run's text column(s)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    predictor = Predictor.load(args.run)
    rows = pd.read_csv(args.rows, keep_default_na=False)

    def timed(label: str) -> tuple[list, float]:
        t0 = time.perf_counter()
        out = predictor.predict(rows)
        seconds = time.perf_counter() - t0
        print(f"{label}: {seconds:.2f} s for {len(rows)} rows ({len(rows) / seconds:.0f} rows/s)", flush=True)
        return out, seconds

    eager = [timed(f"eager {i + 1}") for i in range(args.repeats)]
    predictor.model = torch.compile(predictor.model, dynamic=True)
    first = timed("compiled, first pass (compiling included)")
    steady = [timed(f"compiled {i + 2}") for i in range(args.repeats)]
    eager_s = float(np.median([s for _, s in eager]))
    steady_s = float(np.median([s for _, s in steady]))
    compile_s = first[1] - steady_s
    print(f"same predictions as eager: {np.mean(np.array(first[0]) == np.array(eager[0][0])):.1%}")
    if steady_s < eager_s:
        per_row = (eager_s - steady_s) / len(rows)
        print(
            f"steady speed-up {eager_s / steady_s:.2f}x; "
            f"compile {compile_s:.1f} s pays after {compile_s / per_row:,.0f} rows"
        )
    else:
        print(f"steady compiled {steady_s:.2f} s is not faster than eager {eager_s:.2f} s: compile never pays")


if __name__ == "__main__":
    main()
