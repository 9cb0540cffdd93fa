"""``textune check``: validate a recipe and its data without training."""

from __future__ import annotations

import numpy as np

from textune.data.batching import train_steps
from textune.data.io import template_columns
from textune.data.tokenize import CHARS_PER_TOKEN_CAP
from textune.prepare import prepare
from textune.recipe import Recipe


def token_lengths(tokenizer, texts: list[str], max_length: int, batch: int = 2048) -> np.ndarray:
    """Untruncated token counts (texts are cut at a generous character cap so a huge cell stays cheap)."""
    cap = max_length * CHARS_PER_TOKEN_CAP
    out: list[int] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer([t[:cap] for t in texts[i : i + batch]], truncation=False, add_special_tokens=True)
        out.extend(len(ids) for ids in enc["input_ids"])
    return np.asarray(out, dtype=np.int64)


def empty_texts(df, template: str | list[str]) -> int:
    """Rows whose text columns are all blank (a template's literal glue, like '{title}. {body}', is not text)."""
    cols = template if isinstance(template, list) else template_columns(template)
    blank = df[cols].fillna("").astype(str).apply(lambda c: c.str.strip() == "")
    return int(blank.all(axis=1).sum())


def check_recipe(recipe: Recipe) -> dict:
    """Loads every split exactly as training would and reports on it.

    Raises:
        TextuneError: the same errors ``train`` would raise, before it writes anything.
    """
    data = prepare(recipe, features=False)
    task, splits, tokenizer = data.task, data.splits, data.tokenizer
    report: dict = {
        "task": recipe.task,
        "model": recipe.model.name,
        "max_length": recipe.data.max_length,
        "splits": {},
    }
    labels = task.class_names
    for name, split in splits.items():
        lengths = token_lengths(tokenizer, split.texts, recipe.data.max_length)
        info = {
            "rows": len(split.df),
            "path": split.path,
            "empty_texts": empty_texts(split.df, list(task.input_columns())),
            "token_length_percentiles": {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99, 100)},
            "truncated": int((lengths > recipe.data.max_length).sum()),
        }
        if recipe.data.truncation != "head" and task.single_text:
            # what the policy does with the texts over the window: which tokens stay, or how many windows
            info["truncation"] = recipe.data.truncation
            if recipe.data.truncation == "chunks":
                info["windows"] = len(split.encoded)
        if split.targets is not None and labels and split.targets.ndim == 1:
            counts = np.bincount(split.targets, minlength=len(labels))
            info["label_counts"] = {lab: int(c) for lab, c in zip(labels, counts, strict=True)}
        if name == "train" and "windows" not in info and task.single_text:
            info["batches"] = batch_plan(recipe, np.minimum(lengths, recipe.data.max_length))
        report["splits"][name] = info
    return report


def batch_plan(recipe: Recipe, lengths: np.ndarray) -> dict:
    """What an epoch of training batches looks like (epoch 0, one process): steps, rows, padding."""
    from textune.training.batch_size import rows_and_accum

    cfg = recipe.train
    rows, accum = rows_and_accum(cfg)
    steps = train_steps(lengths, cfg.seed, 0, rows, accum, cfg.group_by_length, cfg.max_tokens)
    micro = [mb for step in steps for mb in step]
    padded = sum(len(mb) * int(lengths[mb].max()) for mb in micro)
    return {
        "steps_per_epoch": len(steps),
        "micro_batches": len(micro),
        "rows_per_micro_batch": {
            "min": min(map(len, micro)),
            "mean": len(lengths) / len(micro),
            "max": max(map(len, micro)),
        },
        "padding_share": 1 - int(lengths.sum()) / max(padded, 1),
        "auto": cfg.batch_size == "auto",
    }


def format_report(report: dict) -> str:
    lines = [f"recipe OK: task {report['task']}, model {report['model']}, max_length {report['max_length']}"]
    for name, info in report["splits"].items():
        pct = info["token_length_percentiles"]
        lines.append(f"{name}: {info['rows']} rows from {info['path']}")
        lines.append(
            "  tokens: "
            + ", ".join(f"{k} {v}" for k, v in pct.items())
            + f"; {info['truncated']} truncated at {report['max_length']}"
            + f" ({100 * info['truncated'] / max(info['rows'], 1):.1f}%)"
        )
        if "windows" in info:
            lines.append(
                f"  chunks: {info['windows']} windows of {report['max_length']} tokens for {info['rows']} texts "
                f"({info['windows'] / max(info['rows'], 1):.2f} per text)"
            )
        elif "truncation" in info:
            lines.append(f"  truncation {info['truncation']}: the {info['truncated']} longer texts keep those tokens")
        # Empty texts are allowed (the model sees only special tokens) but worth knowing about.
        lines.append(f"  empty texts: {info['empty_texts']}")
        if "label_counts" in info:
            lines.append("  labels: " + ", ".join(f"{k} {v}" for k, v in info["label_counts"].items()))
        if "batches" in info:
            b = info["batches"]
            rows = b["rows_per_micro_batch"]
            size = (
                f"{rows['min']}-{rows['max']} (mean {rows['mean']:.1f})" if rows["min"] != rows["max"] else rows["max"]
            )
            note = "; batch_size auto: the micro-batch size is found when training starts" if b["auto"] else ""
            lines.append(
                f"  batches: {b['steps_per_epoch']} steps per epoch, {b['micro_batches']} micro-batches of {size} "
                f"rows, {100 * b['padding_share']:.1f}% padding{note}"
            )
    return "\n".join(lines)
