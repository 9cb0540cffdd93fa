"""How long `textune predict` takes before its first batch: imports, run check, model load, reading, tokenizing.

    python benchmarks/predict_startup.py runs/NAME rows.csv

Runs the ``textune`` executable's ``predict`` (``textune.cli.entry``) in this process with a clock started on this
script's first line; the time is printed when the first batch of rows is handed to the model (the interpreter's own
start, ~0.05 s, is not counted). Nothing heavy is imported before the command: the clock is hooked into
``textune.models.infer`` when the command itself imports it.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.machinery  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="A finished run directory.")
    p.add_argument("input", help="Rows to predict (CSV/parquet/JSONL).")
    args = p.parse_args()

    seen: list[float] = []

    def clocked(infer) -> None:
        real = infer.inference_batches

        def first_batch(*a, **k):
            if not seen:
                seen.append(time.perf_counter() - T0)
                print(f"first batch after {seen[0]:.2f} s", file=sys.stderr, flush=True)
            return real(*a, **k)

        infer.inference_batches = first_batch

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "textune.models.infer":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                clocked(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Hook())
    from textune.cli import entry

    with tempfile.TemporaryDirectory() as tmp:
        code = entry(["predict", args.run, "--input", args.input, "--output", str(Path(tmp) / "out.csv")])
        if code:
            sys.exit(code)
    print(f"whole prediction {time.perf_counter() - T0:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
