"""What a finished run leaves: final predictions through the Predictor, calibration, plots, summary, manifest,
report."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from textune import _atomic
from textune.models.build import finalize_model, load_model_dir
from textune.predict import Predictor, inference_precision, prediction_frame
from textune.prepare import Prepared, data_hashes
from textune.recipe import Recipe
from textune.report.html import write_report
from textune.report.plots import plot_loss, plot_metrics
from textune.run import layout, write_manifest
from textune.training.state import TrainState

log = logging.getLogger(__name__)


def finish(
    run_dir: Path,
    recipe: Recipe,
    data: Prepared,
    state: TrainState,
    precision: str,
    device: torch.device,
    main_metric: str,
    params: dict[str, Any],
    batching: dict[str, Any],
) -> Path:
    """Writes the outputs of a finished run; the manifest last, so a run with a manifest is complete."""
    task = data.task
    finalize_model(run_dir, recipe, task.model_kwargs())
    best = load_model_dir(run_dir / layout.MODEL).to(device).eval()
    # the precision `textune predict` will use on this machine (bf16 emulated here falls back to fp32 there too)
    predictor = Predictor(
        run_dir, recipe, task, best, data.tokenizer, device, data.featurizer, inference_precision(precision, device)
    )
    t0 = time.perf_counter()
    results, valid_logits = _predict_splits(run_dir, recipe, data, predictor)
    predict_s = time.perf_counter() - t0

    history = layout.read_history(run_dir)
    plots = run_dir / layout.PLOTS
    plot_loss(history, plots / "loss.png")
    names = [n for n in task.curve_metrics if n in (results.get("validation") or {})]
    plot_metrics(history, names or [main_metric], plots / "metrics.png")
    task.plots(plots, valid_logits, data.splits["validation"].targets)

    params = {**params, "trainable_percent": round(100 * params["trainable"] / max(params["total"], 1), 4)}
    secs = max(state.train_seconds, 1e-9)
    summary = {
        "task": recipe.task,
        "model": recipe.model.name,
        "main_metric": main_metric,
        "metric_direction": task.direction(main_metric),
        "best_step": state.best_step,
        "selected_on": recipe.train.early_stopping.metric or main_metric,  # what chose best_step
        "steps": state.step,
        "validation": results.get("validation"),
        "test": results.get("test"),
        "parameters": params,
        "precision": precision,
        "batching": batching,
        "device": str(device),
        "processes": int(os.environ.get("WORLD_SIZE", 1)),
        "train_rows": len(data.splits["train"].df),
        "validation_rows": len(data.splits["validation"].df),
        "tokenize_seconds": round(data.tokenize_seconds, 3),
        "train_seconds": round(state.train_seconds, 3),
        "predict_seconds": round(predict_s, 3),
        "train_samples_per_s": round(state.samples / secs, 2),
        "train_tokens_per_s": round(state.tokens / secs, 1),
        "peak_memory_mb": _peak_memory_mb(device),
    }
    layout.write_summary(run_dir, summary)
    if not recipe.train.keep_checkpoint and state.done:
        # a complete run needs no resume state (optimizer moments: about twice the model)
        shutil.rmtree(run_dir / layout.CHECKPOINTS, ignore_errors=True)
    write_manifest(
        run_dir, seed=recipe.train.seed, data_hashes=data_hashes(recipe), device=str(device), precision=precision
    )
    log.info("writing %s", run_dir / layout.REPORT)
    write_report(run_dir)
    return run_dir


def _predict_splits(run_dir: Path, recipe: Recipe, data: Prepared, predictor: Predictor):
    """Validation and test outputs of the best model; the calibration is fitted on the validation outputs the
    Predictor produces, and the validation figures reported for it are cross-fitted (out of sample)."""
    task = data.task
    results: dict[str, dict[str, float]] = {}
    valid_logits = None
    for name, split in data.splits.items():
        if name == "train":
            continue
        logits = predictor.outputs(split.encoded, split.extras)
        if name == "validation":
            valid_logits = logits
            if split.targets is not None:
                results[name] = task.calibrate(logits, split.targets, seed=recipe.train.seed)
                layout.write_task_state(run_dir, task.state())  # with the fitted temperature/thresholds
        elif split.targets is not None:
            results[name] = task.metrics(logits, split.targets)
        frame = prediction_frame(task, split.df, logits, recipe.data.id)
        _atomic.write_csv(layout.prediction_path(run_dir, name), frame)
    return results, valid_logits


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    # ru_maxrss is in KiB on Linux: the whole process's peak resident memory
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
