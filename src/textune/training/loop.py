"""The training recipe, top to bottom: setup -> train epochs -> evaluate -> save.

Written out on Accelerate (device, precision, backward, clipping) rather than hidden in a Trainer, so that
resume, length-grouped batching and sorted inference are plain code one can read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from accelerate import Accelerator
from tqdm.auto import tqdm

from textune import _atomic
from textune.data.batching import collate, move, to_device, train_steps
from textune.data.features import Featurizer, attach_features
from textune.data.prepare import Split, data_hashes, load_splits
from textune.errors import TextuneError
from textune.models.backbone import load_tokenizer
from textune.models.build import build_model, finalize_model, fusion_spec, load_model_dir, save_best
from textune.models.peft import count_total, count_trainable, parameter_table
from textune.predict import infer_logits, pad_id_of
from textune.recipe import Recipe, dump_recipe, parse_duration, recipe_from_dict
from textune.report.plots import plot_loss, plot_metrics
from textune.rundir import RunLock, new_run_dir, write_manifest
from textune.tasks import Task, get_task
from textune.training.batch_size import find_micro_batch, plan_micro_batches, rows_and_accum, trial_step
from textune.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything
from textune.training.optim import build_optimizer, build_scheduler
from textune.training.precision import configure_threads, resolve_precision, setup_cuda_speed

log = logging.getLogger(__name__)


class _Interrupt:
    """Turns Ctrl-C into a flag checked between optimizer steps, so the checkpoint is taken at a clean point."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> _Interrupt:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handle(self, *_: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C once a resumable checkpoint is written."""


def read_history(path: Path, max_step: int | None = None) -> list[dict]:
    """Records of metrics.jsonl (a torn last line from a kill is skipped), optionally up to ``max_step``."""
    out: list[dict] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if max_step is None or rec.get("step", 0) <= max_step:
            out.append(rec)
    return out


def _rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when alone)."""
    return int(os.environ.get("RANK", 0))


def _accelerator(requested: str) -> Accelerator:
    """An Accelerator with the resolved precision. Accelerate keeps its state process-wide; it is reset so
    that several runs in one process (the Python API, a search) may use different precisions."""
    from accelerate.state import AcceleratorState, PartialState

    # cpu=True lets Accelerate see a torchrun world on a machine without GPUs (gloo); alone it changes nothing
    device = PartialState(cpu=not torch.cuda.is_available()).device
    precision = resolve_precision(requested, device)
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision)


# metrics where lower is better; any other metric is maximised unless early_stopping.mode says otherwise
_LOWER_IS_BETTER = ("loss", "log_loss", "mae", "rmse", "rmsle", "smape", "mse")


def _direction(metric: str, task: Task) -> str:
    if metric == task.main_metric:
        return "max" if task.greater_is_better else "min"
    return "min" if metric in _LOWER_IS_BETTER or metric.endswith("_error") else "max"


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _prediction_frame(task: Task, split: Split, logits: np.ndarray, id_col: str | None) -> pd.DataFrame:
    """id, true target column(s) when known, ``pred_*`` and (for probabilistic tasks) ``proba_*`` columns."""
    preds = task.predictions(logits)
    probs = task.predictions(logits, proba=True)
    parts = [preds.add_prefix("pred_")]
    if list(probs.columns) != list(preds.columns):  # regression has no probabilities
        parts.append(probs.add_prefix("proba_"))
    frame = pd.concat(parts, axis=1)
    frame.insert(0, id_col or "row", split.ids(id_col))
    if split.targets is not None:
        for i, col in enumerate(c for c in task.target_columns(split.df) if c in split.df.columns):
            frame.insert(1 + i, col, split.df[col].reset_index(drop=True))
    return frame


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    _atomic.write_csv(path, df)


def _resolve_resume(resume: str | Path, recipe: Recipe | None) -> tuple[Path, Recipe]:
    run_dir = Path(resume)
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        raise TextuneError(f"{run_dir}: not a textune run directory (no recipe.yaml); check the --resume path")
    resumed = recipe_from_dict(yaml.safe_load(saved.read_text()), str(saved))
    if recipe is not None and recipe.train != resumed.train:
        log.warning("--resume: continuing with the recipe saved in %s (the given recipe differs)", run_dir)
    return run_dir, resumed


class Callback:
    """Hooks into the loop (e.g. Optuna pruning). Raising from a hook stops training; the checkpoint stays."""

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        """After each validation pass, with the validation metrics."""

    def on_step_end(self, state: dict[str, Any]) -> None:
        """After each optimizer step (and its checkpoint, if one was due)."""


def train(
    recipe: Recipe | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    callbacks: list[Callback] | None = None,
) -> Path:
    """Fine-tunes the recipe's model and writes a run directory.

    Args:
        recipe: the validated recipe (ignored when resuming: the run's saved recipe is used).
        out: run directory; default ``output.dir/output.name`` (or recipe name + timestamp).
        resume: an interrupted run directory to continue from its last checkpoint.
        callbacks: hooks called after each evaluation and optimizer step.

    Returns:
        The run directory.

    Raises:
        TextuneError: bad recipe or data (nothing is written), or a run that cannot be resumed.
        TrainingInterrupted: Ctrl-C; a resumable checkpoint was written first.
    """
    _check_launch(out, resume)
    if resume is not None:
        run_dir, recipe = _resolve_resume(resume, recipe)
    elif recipe is None:
        raise TextuneError("train: give a recipe, or --resume RUN_DIR")
    cfg = recipe.train
    configure_threads(cfg.num_threads)
    setup_cuda_speed()
    seed_everything(cfg.seed)

    # 1. Data: every check runs before anything is written.
    task = get_task(recipe.task)(recipe)
    splits = load_splits(recipe, task)
    tokenizer = load_tokenizer(recipe.model.name, recipe.model.allow_network, recipe.model.trust_remote_code)
    t0 = time.perf_counter()
    for split in splits.values():
        task.encode_split(tokenizer, split)
    tokenize_s = time.perf_counter() - t0
    if resume is None:
        run_dir = Path(out) if out else new_run_dir(recipe.output.dir, recipe.output.name, recipe._stem)
        # dot-files are a stale lock or temporaries of a run killed before it wrote anything: not a run
        exists = run_dir.exists() and any(not p.name.startswith(".") for p in run_dir.iterdir())
        if exists and _rank() == 0:  # other processes of a multi-process run see rank 0's first files
            raise TextuneError(f"{run_dir}: run directory is not empty; pick another --out or use --resume {run_dir}")

    # one lock per run: in a multi-process run the main process holds it for all
    with RunLock(run_dir) if _rank() == 0 else nullcontext(), _Interrupt() as interrupt:
        return _train_in(
            run_dir,
            recipe,
            task,
            splits,
            tokenizer,
            tokenize_s,
            resume is not None,
            interrupt,
            callbacks or [],
        )


# Accelerate's sharded engines: textune's loop evaluates and checkpoints whole weights in every process
_SHARDED_ENGINES = {
    "ACCELERATE_USE_FSDP": "FSDP",
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
}


def _check_launch(out: str | Path | None, resume: str | Path | None) -> None:
    """What a launcher (torchrun, accelerate launch) set up must suit the loop, before anything is written."""
    for var, engine in _SHARDED_ENGINES.items():
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise TextuneError(
                f"train: the Accelerate config asks for {engine}, which textune does not support yet (its evaluation "
                "and checkpoints need whole weights in each process); use distributed_type: MULTI_GPU (data "
                "parallel, examples/accelerate/), and for memory train.gradient_checkpointing or batch_size: auto"
            )
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and out is None and resume is None:
        raise TextuneError(
            "train: under torchrun / accelerate launch, give --out RUN_DIR (on a filesystem every process sees) "
            "so that all processes write one run directory"
        )


def _train_in(
    run_dir: Path,
    recipe: Recipe,
    task: Task,
    splits: dict[str, Split],
    tokenizer,
    tokenize_s: float,
    resuming: bool,
    interrupt: _Interrupt,
    callbacks: list[Callback],
) -> Path:
    cfg = recipe.train
    accelerator = _accelerator(cfg.precision)
    device = accelerator.device
    precision = accelerator.mixed_precision

    # 2. Model, optimizer, schedule. Seeded again so the head's initialisation does not depend on data loading.
    seed_everything(cfg.seed)
    featurizer = None
    if recipe.features.enabled:
        featurizer = Featurizer(recipe.features)
        attach_features(featurizer, splits)  # statistics from train only
    model, peft_report = build_model(recipe, task.model_kwargs(), fusion_spec(recipe, task, featurizer))
    params = {
        "total": count_total(model),
        "trainable": count_trainable(model),
        "modules": parameter_table(model),
        "peft": peft_report.as_dict(),
    }
    for note in peft_report.notes:
        log.info("note: %s", note)
    train_split, valid_split = splits["train"], splits["validation"]
    lengths = train_split.encoded.lengths
    world, rank = accelerator.num_processes, accelerator.process_index
    rows_per_step, accum = rows_and_accum(cfg)

    planned: dict[int, list[list[np.ndarray]]] = {}

    def epoch_steps(epoch: int) -> list[list[np.ndarray]]:
        """The epoch's steps, computed once per epoch (``accum`` is final once the batch size is known)."""
        if epoch not in planned:
            planned.clear()
            planned[epoch] = train_steps(
                lengths, cfg.seed, epoch, rows_per_step, accum, cfg.group_by_length, cfg.max_tokens
            )
        return planned[epoch]

    # under N processes each optimizer step consumes N groups of micro-batches, one per process
    steps_per_epoch = math.ceil(len(epoch_steps(0)) / world)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    if cfg.gradient_checkpointing:
        (model.encoder if hasattr(model, "fusion") else model).gradient_checkpointing_enable()
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id = pad_id_of(tokenizer)
    micro_size = None if cfg.max_tokens else math.ceil(rows_per_step / accum)
    if cfg.batch_size == "auto":
        try_step = trial_step(
            accelerator.unwrap_model(model),
            getattr(optimizer, "optimizer", optimizer),
            task,
            train_split,
            pad_id,
            device,
            accelerator.autocast,
        )
        micro_size = find_micro_batch(rows_per_step, try_step, str(device))
        if world > 1:  # every process splits its steps alike: the smallest size found anywhere
            found = torch.tensor([micro_size], device=device)
            torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MIN)
            micro_size = int(found.item())
        accum = plan_micro_batches(rows_per_step, micro_size)
        planned.clear()  # steps planned before the probe split into the old number of micro-batches
        micro_size = math.ceil(rows_per_step / accum)
        log.info(
            "train.batch_size auto: micro-batches of %d rows, %d per step of %d rows", micro_size, accum, rows_per_step
        )
    batching = {
        "rows_per_step": None if cfg.max_tokens else rows_per_step,
        "micro_batch_size": micro_size,
        "micro_batches_per_step": accum,
        "max_tokens": cfg.max_tokens,
    }
    if cfg.compile:
        model = torch.compile(model)
    budget_s = parse_duration(cfg.time_budget) if cfg.time_budget else None
    t_start = time.perf_counter()
    main_metric = cfg.early_stopping.metric or task.main_metric
    mode = cfg.early_stopping.mode or _direction(main_metric, task)
    eval_every = cfg.eval_every or steps_per_epoch
    ckpt_every = cfg.checkpoint_every or eval_every
    metrics_path = run_dir / "metrics.jsonl"

    # 3. Fresh run or resume.
    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "step_in_epoch": 0,
        "best": None,
        "best_step": None,
        "bad_evals": 0,
        "train_seconds": 0.0,
        "samples": 0,
        "tokens": 0,
        "done": False,
    }
    ckpt_dir = run_dir / "checkpoints" / "last"
    # A run killed before its first checkpoint resumes from step 0 (same seed, same result).
    if resuming and (ckpt_dir.exists() or ckpt_dir.with_name(ckpt_dir.name + ".old").exists()):
        state = load_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, scheduler, rank)
        history = read_history(metrics_path, state["step"])
        if accelerator.is_main_process:
            _atomic.write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        log.info("resuming %s at step %d of %d", run_dir, state["step"], total_steps)
    elif accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic.write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        _atomic.write_json(run_dir / "labels.json", task.state())
        if featurizer is not None:
            _atomic.write_json(run_dir / "features.json", featurizer.to_dict())
        metrics_path.write_text("")

    def evaluate() -> dict[str, float]:
        # Each process infers its share of the rows on the unwrapped model (DDP's forward would synchronise
        # buffers on every call, and the shares need different numbers of calls); the shares are then gathered,
        # so every validation row counts exactly once.
        rows = np.arange(len(valid_split.encoded))[rank::world]
        logits = infer_logits(
            accelerator.unwrap_model(model),
            valid_split.encoded,
            cfg.eval_batch_size,
            device,
            pad_id,
            precision,
            valid_split.extras,
            rows=rows,
        )
        if world > 1:
            parts: list[Any] = [None] * world
            torch.distributed.all_gather_object(parts, (rows, logits[rows]))
            for part_rows, part in parts:
                logits[part_rows] = part
        logits = task.combine_outputs(logits, valid_split.encoded)
        metrics = task.metrics(logits, valid_split.targets)
        with torch.no_grad():
            metrics["loss"] = float(task.loss(torch.from_numpy(logits), torch.from_numpy(valid_split.targets)))
        return metrics

    def validate() -> None:
        """Evaluates, logs, tells the callbacks and keeps the best weights so far."""
        settle()
        metrics = evaluate()
        if accelerator.is_main_process:
            _atomic.append_jsonl(metrics_path, {"step": state["step"], "split": "validation", **metrics})
        for cb in callbacks:
            cb.on_evaluate(state["step"], metrics)
        if _is_better(metrics[main_metric], state["best"], mode):
            state.update(best=metrics[main_metric], best_step=state["step"], bad_evals=0)
            if accelerator.is_main_process:
                save_best(accelerator.unwrap_model(model), tokenizer, run_dir)
        else:
            state["bad_evals"] += 1

    def checkpoint() -> None:
        settle()  # never save weights a non-finite step has touched
        # every process's dropout stream must resume where it stopped: the main process saves them all
        rngs = [rng_state()]
        if world > 1:
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, rng_state())
        if accelerator.is_main_process:
            save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, scheduler, state, rngs)

    # 4. Train.
    bar = tqdm(
        total=total_steps,
        initial=state["step"],
        disable=not cfg.progress,
        # in a log file (not a terminal) a bar redrawn ten times a second floods it: redraw every 30 s
        mininterval=0.1 if sys.stderr.isatty() else 30,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    # The logged train loss averages the steps since the last log; the checkpoint carries that window so a
    # resumed run logs the same numbers as an uninterrupted one.
    window_loss, window_n = state.get("log_window", (0.0, 0))
    t_window = time.perf_counter()
    # Losses stay on the device until a log, evaluation or checkpoint: reading one makes the host wait for the
    # device, and on a GPU the host should be queueing the next step's work meanwhile.
    pending: list[tuple[int, torch.Tensor]] = []
    last_loss: float | None = None  # the newest loss read from the device, for the progress bar

    def settle() -> None:
        """Reads the pending steps' losses in one transfer and stops at the first non-finite one."""
        nonlocal window_loss, last_loss
        if not pending:
            return
        values = torch.stack([loss for _, loss in pending]).tolist()
        bad = next((step for (step, _), v in zip(pending, values, strict=True) if not math.isfinite(v)), None)
        pending.clear()
        if bad is not None:
            raise TextuneError(
                f"training: non-finite loss at step {bad}; the last good checkpoint is kept in "
                f"{ckpt_dir}; lower train.lr or use train.precision: fp32"
            )
        window_loss += sum(values)
        last_loss = values[-1]
        state["log_window"] = (window_loss, window_n)

    stop = state["done"]
    first_step = state["step"]
    while not stop and state["step"] < total_steps:
        groups = epoch_steps(state["epoch"])
        if state["step_in_epoch"] >= steps_per_epoch:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            continue
        model.train()
        t_step = time.perf_counter()
        # process r takes group step*N + r; the last step of an epoch wraps around (as DistributedSampler pads)
        group = groups[(state["step_in_epoch"] * world + rank) % len(groups)]
        n_group = sum(len(mb) for mb in group)
        step_loss = torch.zeros((), device=device)
        for j, mb in enumerate(group):
            micro = collate(train_split.encoded, mb, pad_id, train_split.extras)
            state["tokens"] += int(micro["attention_mask"].sum())  # counted on the host: no device sync
            batch = to_device(micro, device)
            targets = move(torch.from_numpy(train_split.targets[mb]), device)
            # no_sync: under several processes, gradients are all-reduced once per step, not per micro-batch
            sync = j == len(group) - 1
            with accelerator.no_sync(model) if not sync else nullcontext(), accelerator.autocast():
                logits = model(**batch).logits
                # weight each micro-batch by its share so the step's gradient is the mean over the group
                loss = task.loss(logits, targets) * (len(mb) / n_group)
                accelerator.backward(loss)
            step_loss += loss.detach().float()
        pending.append((state["step"] + 1, step_loss))
        if cfg.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["step_in_epoch"] += 1
        state["samples"] += n_group * world
        state["train_seconds"] += time.perf_counter() - t_step
        window_n += 1
        bar.update(1)
        shown = {"loss": f"{last_loss:.4f}"} if last_loss is not None else {}
        bar.set_postfix(**shown, samples_s=f"{state['samples'] / max(state['train_seconds'], 1e-9):.1f}")

        at_end = state["step"] >= total_steps
        end_of_epoch = state["step_in_epoch"] >= steps_per_epoch
        if state["step"] % cfg.log_every == 0 or at_end:
            settle()
            rec = {
                "step": state["step"],
                "epoch": round(state["epoch"] + state["step_in_epoch"] / steps_per_epoch, 4),
                "split": "train",
                "loss": window_loss / window_n,
                "lr": scheduler.get_last_lr()[0],
                "samples_per_s": window_n and n_group * window_n / (time.perf_counter() - t_window),
            }
            if accelerator.is_main_process:
                _atomic.append_jsonl(metrics_path, rec)
            window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
            state["log_window"] = (0.0, 0)
        evaluated = state["step"] % eval_every == 0 or at_end or (cfg.eval_every is None and end_of_epoch)
        if evaluated:
            validate()
        patience = cfg.early_stopping.patience
        early = evaluated and patience is not None and state["bad_evals"] >= patience
        if early:
            log.info(
                "early stopping at step %d: no %s improvement in %d evaluations", state["step"], main_metric, patience
            )
        out_of_time = False
        if budget_s is not None and not (at_end or early):
            # stop while there is time for one more step (the average so far) and the final evaluation
            elapsed = time.perf_counter() - t_start
            out_of_time = elapsed + 2 * elapsed / max(1, state["step"] - first_step) > budget_s
            if world > 1:  # clocks differ between processes: the main process decides for all
                decision = [out_of_time]
                torch.distributed.broadcast_object_list(decision, src=0)
                out_of_time = decision[0]
            if out_of_time:
                log.info(
                    "train.time_budget %s: stopping at step %d with a resumable checkpoint (--resume)",
                    cfg.time_budget,
                    state["step"],
                )
                if not evaluated:
                    validate()
                    evaluated = True
        state["done"] = at_end or early
        stop = state["done"] or out_of_time
        if evaluated or state["step"] % ckpt_every == 0 or state["done"] or interrupt.requested:
            checkpoint()
        for cb in callbacks:
            cb.on_step_end(state)
        if interrupt.requested:
            bar.close()
            raise TrainingInterrupted(f"interrupted at step {state['step']}; continue with --resume {run_dir}")
        if end_of_epoch:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
    bar.close()

    # 5. Final: best model on validation (and test), predictions, plots, summary, manifest. One process does it,
    # without collectives: the processes first leave the process group together (Accelerate's end_training), so
    # none exits while a peer still holds a connection to it.
    if world > 1:
        accelerator.wait_for_everyone()
        accelerator.end_training()
    if not accelerator.is_main_process:
        return run_dir
    return _finish(
        run_dir, recipe, task, splits, tokenizer, state, precision, device, tokenize_s, main_metric, params, batching
    )


def _finish(
    run_dir: Path,
    recipe: Recipe,
    task: Task,
    splits: dict[str, Split],
    tokenizer,
    state: dict[str, Any],
    precision: str,
    device: torch.device,
    tokenize_s: float,
    main_metric: str,
    params: dict[str, Any],
    batching: dict[str, Any],
) -> Path:
    cfg = recipe.train
    finalize_model(run_dir, recipe, task.model_kwargs())
    best = load_model_dir(run_dir / "model").to(device)
    pad_id = pad_id_of(tokenizer)
    results: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    valid_logits = None
    for name, split in splits.items():
        if name == "train":
            continue
        logits = infer_logits(best, split.encoded, cfg.eval_batch_size, device, pad_id, precision, split.extras)
        logits = task.combine_outputs(logits, split.encoded)
        if name == "validation" and split.targets is not None and task.fit_calibration(logits, split.targets):
            _atomic.write_json(run_dir / "labels.json", task.state())  # with the fitted temperature/thresholds
        if split.targets is not None:
            results[name] = task.metrics(logits, split.targets)
        if name == "validation":
            valid_logits = logits
        _write_csv(run_dir / "predictions" / f"{name}.csv", _prediction_frame(task, split, logits, recipe.data.id))
    predict_s = time.perf_counter() - t0

    history = read_history(run_dir / "metrics.jsonl")
    plots = run_dir / "plots"
    plot_loss(history, plots / "loss.png")
    names = [n for n in task.curve_metrics if n in (results.get("validation") or {})]
    plot_metrics(history, names or [main_metric], plots / "metrics.png")
    task.plots(plots, valid_logits, splits["validation"].targets)

    params = {**params, "trainable_percent": round(100 * params["trainable"] / max(params["total"], 1), 4)}
    secs = max(state["train_seconds"], 1e-9)
    summary = {
        "task": recipe.task,
        "model": recipe.model.name,
        "main_metric": main_metric,
        "best_step": state["best_step"],
        "steps": state["step"],
        "validation": results.get("validation"),
        "test": results.get("test"),
        "parameters": params,
        "precision": precision,
        "batching": batching,
        "device": str(device),
        "processes": int(os.environ.get("WORLD_SIZE", 1)),
        "train_rows": len(splits["train"].df),
        "validation_rows": len(splits["validation"].df),
        "tokenize_seconds": round(tokenize_s, 3),
        "train_seconds": round(state["train_seconds"], 3),
        "predict_seconds": round(predict_s, 3),
        "train_samples_per_s": round(state["samples"] / secs, 2),
        "train_tokens_per_s": round(state["tokens"] / secs, 1),
        "peak_memory_mb": _peak_memory_mb(device),
    }
    _atomic.write_json(run_dir / "summary.json", summary)
    write_manifest(run_dir, seed=cfg.seed, data_hashes=data_hashes(recipe), device=str(device))
    from textune.report.html import write_report

    write_report(run_dir)
    return run_dir


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    # ru_maxrss is in KiB on Linux: the whole process's peak resident memory
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
