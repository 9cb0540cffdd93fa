"""CPU inference speed of ``textune export --onnx [--int8]``: rows/s of PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime
int8 on the same padded batches, with how far each ONNX model's logits are from PyTorch's.

    .venv/bin/python benchmarks/onnx_bench.py --rows 512                        # MiniLM with a fresh 4-class head
    .venv/bin/python benchmarks/onnx_bench.py --rows 512 --model runs/NAME      # a run's (or an export's) model
    .venv/bin/python benchmarks/onnx_bench.py --rows 500 --model runs/demo --input examples/data/ag_news_test_500.csv

Texts: the ``text`` column of ``--input`` or of ../shared/data/ag_news/train_12k.csv when present, else synthetic
news-like rows; with a ``label`` column and a trained model, each engine's accuracy too (labels read through the model
config's id2label).
Batches are tokenized before timing (``--batch`` rows, padded to their longest, at most ``--max-length`` tokens), in
input order; each engine runs one warm-up batch, then the whole set once. Needs ``pip install 'textune[onnx]'``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AG_NEWS = ROOT.parent / "shared" / "data" / "ag_news" / "train_12k.csv"
WORDS = (
    "the a of in on and to with for after new said today government minister election football match season "
    "stocks shares profit market investors software internet computer space scientists research company oil"
).split()


def texts(rows: int, path: Path | None = None) -> tuple[list[str], list[str] | None, str]:
    """``rows`` texts (and labels, when the file has a ``label`` column) from ``path``, else AG News, else made up."""
    for candidate in (path, AG_NEWS):
        if candidate is not None and candidate.is_file():
            import pandas as pd

            frame = pd.read_csv(candidate).head(rows)
            labels = frame["label"].astype(str).tolist() if "label" in frame else None
            return frame["text"].astype(str).tolist(), labels, str(candidate)
    rng = random.Random(0)
    made = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(rows)]
    return made, None, "synthetic"


def model_dir(name: str, work: Path) -> Path:
    """A saved model directory: a run's ``model/``, an exported directory, or MiniLM with a fresh head."""
    path = Path(name)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textune.models.backbone import resolve_model_path

    source = resolve_model_path(name)
    out = work / "model"
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=4).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def timed(run, batches) -> tuple[float, np.ndarray]:
    run(batches[0])  # warm-up: first-call allocations and kernel choices
    start = time.perf_counter()
    out = np.concatenate([run(b) for b in batches])
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="bundled:minilm", help="run or model directory, or a model name")
    ap.add_argument("--input", type=Path, help="CSV with a text column (and optionally label)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from textune.models.build import load_model_dir
    from textune.onnx_export import INT8_FILE, ONNX_FILE, export_onnx, onnx_logits, onnx_session

    torch.set_num_threads(args.threads)
    rows, labels, source = texts(args.rows, args.input)
    with tempfile.TemporaryDirectory(prefix="onnx_bench.") as tmp:
        work = Path(tmp)
        src = model_dir(args.model, work)
        start = time.perf_counter()
        export_onnx(src, work, int8=True)
        export_s = time.perf_counter() - start

        tokenizer = AutoTokenizer.from_pretrained(src)
        batches = [
            dict(
                tokenizer(
                    rows[i : i + args.batch],
                    padding=True,
                    truncation=True,
                    max_length=args.max_length,
                    return_tensors="np",
                )
            )
            for i in range(0, len(rows), args.batch)
        ]
        tokens = int(sum(b["attention_mask"].sum() for b in batches))

        model = load_model_dir(src).float().eval()
        takes = {"input_ids", "attention_mask", "token_type_ids"}

        def pytorch(batch):
            with torch.inference_mode():
                feed = {k: torch.from_numpy(v).long() for k, v in batch.items() if k in takes}
                return model(**feed).logits.float().numpy()

        names = model.config.id2label

        def accuracy(logits: np.ndarray) -> dict[str, float]:
            if labels is None:
                return {}
            predicted = [names[int(i)] for i in logits.argmax(1)]
            return {"accuracy": float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))}

        results = {}
        seconds, reference = timed(pytorch, batches)
        results["pytorch_fp32"] = {"rows_per_s": len(rows) / seconds, **accuracy(reference)}
        for name, file in (("onnxruntime_fp32", ONNX_FILE), ("onnxruntime_int8", INT8_FILE)):
            session = onnx_session(work / file, threads=args.threads)
            seconds, logits = timed(lambda b, s=session: onnx_logits(s, b), batches)
            results[name] = {
                "rows_per_s": len(rows) / seconds,
                "max_abs_logit_diff": float(np.abs(logits - reference).max()),
                "argmax_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
                "file_mb": (work / file).stat().st_size / 1e6,
                **accuracy(logits),
            }
    report = {
        "model": args.model,
        "texts": source,
        "rows": len(rows),
        "tokens": tokens,
        "batch": args.batch,
        "max_length": args.max_length,
        "threads": args.threads,
        "export_s": round(export_s, 1),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }
    print(json.dumps(report, indent=1))
    print("\n| engine | rows/s | max abs logit diff vs PyTorch | argmax agreement | accuracy | file MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        diff = f"{r['max_abs_logit_diff']:.2g}" if "max_abs_logit_diff" in r else "-"
        agree = f"{r['argmax_agreement']:.1%}" if "argmax_agreement" in r else "-"
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        size = f"{r['file_mb']:.1f}" if "file_mb" in r else "-"
        print(f"| {name} | {r['rows_per_s']:.0f} | {diff} | {agree} | {acc} | {size} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
