"""Where a training step's time goes: torch.profiler over textune's own steps, grouped by kind of work.

    python benchmarks/profile_step.py --data ../shared/data/ag_news/train_12k.csv --steps 12

Loads the model (default: bundled:minilm, all-MiniLM-L6-v2) as textune does, tokenizes the texts with textune's
tokenizer path, builds length-grouped steps with ``train_steps`` and profiles forward + backward + clipping + AdamW,
the work of textune's loop. Prints each kind's share of CPU time and the step's model FLOPs utilisation against a
measured fp32 matmul peak. Options: ``--max-tokens`` (token-budget batches), ``--compile`` (torch.compile).

``--ab`` times textune's CPU step against the plain one (torch's dropout, dense embedding gradients, torch's
clipping, the full last layer: what a Trainer script runs) in one process, step by step in alternating order on the
same batches, and prints the ratio: on a shared machine whose speed drifts by several percent between runs, only such
an interleaved comparison resolves differences of a few percent.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from textune.data.batching import collate, train_steps
from textune.data.tokenize import tokenize
from textune.models.backbone import load_classifier, load_tokenizer, resolve_model_path
from textune.models.build import encoder_layers
from textune.models.dropout import use_fast_dropout
from textune.models.embedding_grad import keep_embedding_grad, zero_grad
from textune.models.first_token import first_token_last_layer
from textune.recipe import TrainConfig
from textune.training.optim import build_optimizer

# aten op (and textune:: region) name fragments -> kind of work (first match wins)
KINDS = [
    ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "aten::linear")),
    ("attention", ("scaled_dot_product", "softmax", "_flash", "_efficient_attention")),
    ("optimizer", ("adam", "_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt")),
    ("layer norm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("dropout", ("dropout", "bernoulli", "native_dropout", "aten::random_", "sfc64_draws")),
    ("embedding", ("embedding",)),
    ("grad clipping", ("norm", "clamp", "aten::stack")),
    ("zero / copy / fill", ("zero_", "fill_", "copy_", "aten::to", "empty")),
    ("elementwise", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::where", "aten::sum")),
]


def kind_of(name: str) -> str:
    for kind, parts in KINDS:
        if any(p in name for p in parts):
            return kind
    return "other"


def matmul_peak(n: int = 1024, seconds: float = 2.0, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="bundled:minilm")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, as Accelerate does")
    p.add_argument(
        "--native-dropout",
        action="store_true",
        help="Keep torch's dropout, dense embedding gradients, clipping and the full last layer (textune changes all "
        "four)",
    )
    p.add_argument("--top", type=int, default=0, help="Also print the N aten ops with the most self time.")
    p.add_argument(
        "--ab", action="store_true", help="Time textune's step against the plain one, interleaved (no profile)."
    )
    args = p.parse_args()

    df = pd.read_csv(args.data, keep_default_na=False).head(args.rows)
    labels = {v: i for i, v in enumerate(sorted(df["label"].astype(str).unique()))}
    tokenizer = load_tokenizer(resolve_model_path(args.model))
    encoded, _ = tokenize(tokenizer, df["text"].tolist(), args.max_length)
    targets = df["label"].astype(str).map(labels).to_numpy()
    steps = train_steps(encoded.lengths, 42, 0, args.batch_size, 1, True, args.max_tokens)
    pad_id = tokenizer.pad_token_id or 0

    def variant(plain: bool) -> tuple[torch.nn.Module, Callable[[list], int]]:
        """The model and a function running one optimizer step of it (returns the step's real tokens)."""
        torch.manual_seed(0)
        model, _ = load_classifier(args.model, {"num_labels": len(labels)})
        if not plain:
            use_fast_dropout(model)
            first_token_last_layer(model, encoder_layers(model))  # as textune's setup: the head reads token 0 only
        optimizer = build_optimizer(model, TrainConfig(lr=5e-5), torch.device("cpu"))
        kept = None if plain or args.compile else keep_embedding_grad(model)  # as textune's CPU loop
        fwd = torch.compile(model) if args.compile else model
        model.train()

        def run(step) -> int:
            tokens = 0
            for mb in step:
                batch = collate(encoded, mb, pad_id)
                # backward inside autocast, as textune's loop (Accelerate's backward) runs it
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    out = fwd(**batch).logits
                    loss = torch.nn.functional.cross_entropy(out.float(), torch.from_numpy(targets[mb]))
                    loss.backward()
                tokens += int(batch["attention_mask"].sum())
            if kept is None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            else:
                kept.clip_grad_norm_(model.parameters(), 1.0)  # row-wise, as textune's CPU loop
            optimizer.step()
            zero_grad(optimizer, kept)
            return tokens

        return model, run

    model, run = variant(args.native_dropout)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    chosen = steps[args.warmup : args.warmup + args.steps]
    if args.ab:
        _, plain_run = variant(True)
        for step in steps[: args.warmup]:
            run(step)
            plain_run(step)
        times: dict[str, list[float]] = {"textune": [], "plain": []}
        for i, step in enumerate(chosen):
            for name in ("textune", "plain") if i % 2 == 0 else ("plain", "textune"):
                t0 = time.perf_counter()
                (run if name == "textune" else plain_run)(step)
                times[name].append(time.perf_counter() - t0)
        a, b = np.array(times["textune"]), np.array(times["plain"])
        print(
            f"{len(chosen)} steps each, interleaved, {args.precision}: textune {a.sum():.2f} s, plain {b.sum():.2f} s; "
            f"plain/textune: ratio of sums {b.sum() / a.sum():.3f}, median per-step ratio {np.median(b / a):.3f}"
        )
        return
    for step in steps[: args.warmup]:
        run(step)
    t0 = time.perf_counter()
    tokens = sum(run(step) for step in chosen)
    wall = time.perf_counter() - t0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for step in chosen:
            run(step)
    by_kind: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        # self time of aten ops (no double counting through nested calls) and of textune's named non-torch work
        if evt.key.startswith(("aten::", "textune::")):
            by_kind[kind_of(evt.key)] += evt.self_cpu_time_total
    total = sum(by_kind.values())
    rows = sum(len(mb) for step in chosen for mb in step)
    padded = sum(len(mb) * int(encoded.lengths[mb].max()) for step in chosen for mb in step)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(2048, dtype=dtype)
    achieved = 6 * non_embedding * tokens / wall
    print(
        f"{len(chosen)} steps, {rows} rows, {tokens} tokens ({tokens / padded:.1%} of padded), {wall:.1f} s, "
        f"{rows / wall:.1f} samples/s, {torch.get_num_threads()} threads"
    )
    print(
        f"model FLOPs {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the {args.precision} matmul peak "
        f"({peak / 1e9:.1f} GFLOP/s, 2048^2)"
    )
    print("| kind of work | share of op time |\n| --- | ---: |")
    for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {t / total:.1%} |")
    if args.top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
