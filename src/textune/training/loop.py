"""The training recipe, top to bottom: prepare -> setup -> fit (step, validate, checkpoint) -> finish.

Written out on Accelerate (device, precision, backward, clipping) rather than hidden in a Trainer, so that
resume, length-grouped batching and sorted inference are plain code one can read. ``prepare`` (data),
``setup`` (accelerator, model, optimizer, plan), ``evaluate`` and ``outputs`` (what a finished run writes) live in
their own modules; this one holds the loop.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from textune import _atomic, startup
from textune._seed import rng_state, seed_everything
from textune.data.batching import collate, move, to_device
from textune.device import configure_threads, setup_cuda_speed
from textune.errors import TextuneError
from textune.models.build import save_best
from textune.prepare import Prepared, prepare
from textune.recipe import Recipe, dump_recipe, parse_duration, recipe_from_dict
from textune.run import RunLock, layout, new_run_dir
from textune.training.checkpoint import load_checkpoint, save_checkpoint
from textune.training.evaluate import evaluate
from textune.training.launch import check_launch, rank
from textune.training.outputs import finish
from textune.training.setup import Setup, setup
from textune.training.state import TrainState
from textune.training.trackers import Trackers, TrackingInfo
from textune.training.trackers import resolve as resolve_tracking

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


class Callback:
    """Hooks into the loop (e.g. Optuna pruning). Raising from a hook stops training; the checkpoint stays."""

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        """After each validation pass, with the validation metrics."""

    def on_step_end(self, state: TrainState) -> None:
        """After each optimizer step (and its checkpoint, if one was due)."""


def train(
    recipe: Recipe | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    callbacks: list[Callback] | None = None,
    tracking: TrackingInfo | None = None,
) -> Path:
    """Fine-tunes the recipe's model and writes a run directory.

    Args:
        recipe: the validated recipe (ignored when resuming: the run's saved recipe is used).
        out: run directory; default ``output.dir/output.name`` (or recipe name + timestamp).
        resume: an interrupted run directory to continue from its last checkpoint.
        callbacks: hooks called after each evaluation and optimizer step.
        tracking: how the run is named in the ``train.report_to`` trackers (default: the recipe file's stem as
            the experiment, the run directory's name as the run).

    Returns:
        The run directory.

    Raises:
        TextuneError: bad recipe or data (nothing is written), or a run that cannot be resumed.
        TrainingInterrupted: Ctrl-C; a resumable checkpoint was written first.
    """
    check_launch(out, resume)
    if resume is not None:
        run_dir, recipe = _resolve_resume(resume, recipe)
    elif recipe is None:
        raise TextuneError("train: give a recipe, or --resume RUN_DIR")
    tracking = resolve_tracking(recipe, tracking, run_dir if resume is not None else None)
    configure_threads(recipe.train.num_threads)
    setup_cuda_speed()
    seed_everything(recipe.train.seed)
    startup.resume()  # the `textune` command's start-up ends before data is read (see textune/startup.py)
    data = prepare(recipe)  # every check runs before anything is written
    if resume is None:
        run_dir = Path(out) if out else new_run_dir(recipe.output.dir, recipe.output.name, recipe._stem)
        # dot-files are a stale lock or temporaries of a run killed before it wrote anything: not a run
        exists = run_dir.exists() and any(not p.name.startswith(".") for p in run_dir.iterdir())
        if exists and rank() == 0:  # other processes of a multi-process run see rank 0's first files
            raise TextuneError(f"{run_dir}: run directory is not empty; pick another --out or use --resume {run_dir}")

    # one lock per run: in a multi-process run the main process holds it for all
    with RunLock(run_dir) if rank() == 0 else nullcontext(), _Interrupt() as interrupt:
        run = setup(recipe, data, run_dir)
        state = _start(run_dir, recipe, data, run, resume is not None)
        main_metric = recipe.train.early_stopping.metric or data.task.main_metric
        trackers = Trackers(run.accelerator, tracking, run_dir)
        try:
            trackers.start(recipe, state.step, resuming=resume is not None)
            _Fit(run_dir, recipe, data, run, state, main_metric, interrupt, callbacks or [], trackers).fit()
            # One process writes the outputs, without collectives: the processes first leave the process group
            # together (Accelerate's end_training), so none exits while a peer still holds a connection to it.
            if run.accelerator.num_processes > 1:
                run.accelerator.wait_for_everyone()
                trackers.end_processes()
            if not run.accelerator.is_main_process:
                return run_dir
            # a run that keeps its best step by validation loss still reports the task's metric first
            reported = data.task.main_metric if main_metric == "loss" else main_metric
            finish(run_dir, recipe, data, state, run.precision, run.device, reported, run.params, run.plan.describe())
            trackers.close()  # after the outputs: the summary and plots go to the trackers too
        except BaseException as exc:
            trackers.abort(exc, stopped=isinstance(exc, (KeyboardInterrupt, TrainingInterrupted)))
            raise
        return run_dir


def _resolve_resume(resume: str | Path, recipe: Recipe | None) -> tuple[Path, Recipe]:
    run_dir = Path(resume)
    if layout.is_baseline_dir(run_dir):
        raise TextuneError(f"{run_dir}: is a baseline directory, not a training run; it cannot be resumed")
    if (run_dir / layout.SUMMARY).is_file() and layout.read_summary(run_dir).get("kind") in ("cv", "ensemble"):
        # a single run written into a CV parent or an ensemble would replace its task state and summary
        raise TextuneError(
            f"{run_dir}: is a cross-validation or ensemble directory; continue a CV run with 'textune train --resume "
            f"{run_dir}' (without --folds 0)"
        )
    if not (run_dir / layout.RECIPE).is_file():
        raise TextuneError(f"{run_dir}: not a textune run directory (no recipe.yaml); check the --resume path")
    resumed = recipe_from_dict(layout.read_recipe_raw(run_dir), str(run_dir / layout.RECIPE))
    if recipe is not None and recipe.train != resumed.train:
        log.warning("--resume: continuing with the recipe saved in %s (the given recipe differs)", run_dir)
    return run_dir, resumed


def _start(run_dir: Path, recipe: Recipe, data: Prepared, run: Setup, resuming: bool) -> TrainState:
    """A fresh run writes its recipe and task state; a resumed one loads its checkpoint and cuts the history
    back to it. A run killed before its first checkpoint resumes from step 0 (same seed, same result)."""
    ckpt_dir = run_dir / layout.LAST_CHECKPOINT
    if resuming and (ckpt_dir.exists() or _atomic.aside(ckpt_dir).exists()):
        raw = load_checkpoint(
            ckpt_dir,
            run.accelerator.unwrap_model(run.model),
            run.optimizer,
            run.scheduler,
            run.accelerator.process_index,
            scaler=run.accelerator.scaler,
        )
        state = TrainState.from_dict(raw)
        if run.accelerator.is_main_process:
            layout.write_history(run_dir, layout.read_history(run_dir, state.step))
        log.info("resuming %s at step %d of %d", run_dir, state.step, run.plan.total_steps)
        return state
    if run.accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        layout.write_recipe(run_dir, dump_recipe(recipe))
        layout.write_task_state(run_dir, data.task.state())
        if data.featurizer is not None:
            layout.write_features(run_dir, data.featurizer.to_dict())
        layout.write_history(run_dir, [])
    return TrainState()


class _Fit:
    """The loop of optimizer steps, with validation, early stopping, time budget and checkpoints.

    Losses stay on the device until a log, evaluation or checkpoint (``pending``): reading one makes the host
    wait for the device, and on a GPU the host should be queueing the next step's work meanwhile.
    """

    def __init__(
        self,
        run_dir: Path,
        recipe: Recipe,
        data: Prepared,
        run: Setup,
        state: TrainState,
        main_metric: str,
        interrupt: _Interrupt,
        callbacks: list[Callback],
        trackers: Trackers,
    ):
        self.run_dir, self.recipe, self.cfg, self.data, self.run = run_dir, recipe, recipe.train, data, run
        self.state, self.interrupt, self.callbacks, self.trackers = state, interrupt, callbacks, trackers
        self.main_metric = main_metric
        self.mode = self.cfg.early_stopping.mode or data.task.direction(main_metric, "train.early_stopping.metric")
        self.steps_per_epoch = run.plan.steps_per_epoch
        self.total_steps = run.plan.total_steps
        self.eval_every = self.cfg.eval_every or self.steps_per_epoch
        self.ckpt_every = self.cfg.checkpoint_every or self.eval_every
        self.budget_s = parse_duration(self.cfg.time_budget) if self.cfg.time_budget else None
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.last_loss: float | None = None  # the newest loss read from the device, for the progress bar
        self.window_loss, self.window_n = state.log_window
        self.t_window = time.perf_counter()
        self.t_start = time.perf_counter()
        self.first_step = state.step
        self.rows_in_step = 0

    @property
    def is_main(self) -> bool:
        return self.run.accelerator.is_main_process

    def fit(self) -> None:
        """Steps until the plan, early stopping, the time budget or Ctrl-C ends the run."""
        state = self.state
        bar = tqdm(
            total=self.total_steps,
            initial=state.step,
            disable=not self.cfg.progress,
            # in a log file (not a terminal) a bar redrawn ten times a second floods it: redraw every 30 s
            mininterval=0.1 if sys.stderr.isatty() else 30,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        try:
            stop = state.done
            while not stop and state.step < self.total_steps:
                if state.step_in_epoch >= self.steps_per_epoch:
                    state.epoch, state.step_in_epoch = state.epoch + 1, 0
                    continue
                self.step()
                bar.update(1)
                shown = {"loss": f"{self.last_loss:.4f}"} if self.last_loss is not None else {}
                bar.set_postfix(**shown, samples_s=f"{state.samples / max(state.train_seconds, 1e-9):.1f}")
                stop = self.after_step()
        finally:
            bar.close()

    def step(self) -> None:
        """One optimizer step over this process's group of micro-batches."""
        state, run, task, split = self.state, self.run, self.data.task, self.data.splits["train"]
        world, accelerator = run.plan.world, run.accelerator
        groups = run.plan.epoch(state.epoch)
        run.model.train()
        t_step = time.perf_counter()
        # process r takes group step*N + r; the last step of an epoch wraps around (as DistributedSampler pads)
        group = groups[(state.step_in_epoch * world + accelerator.process_index) % len(groups)]
        n_group = sum(len(mb) for mb in group)
        step_loss = torch.zeros((), device=run.device)
        for j, mb in enumerate(group):
            micro = collate(split.encoded, mb, run.pad_id, split.extras)
            state.tokens += int(micro["attention_mask"].sum())  # counted on the host: no device sync
            batch = to_device(micro, run.device)
            targets = move(torch.from_numpy(split.targets[mb]), run.device)
            # no_sync: under several processes, gradients are all-reduced once per step, not per micro-batch
            sync = j == len(group) - 1
            with accelerator.no_sync(run.model) if not sync else nullcontext(), accelerator.autocast():
                logits = run.model(**batch).logits
                # weight each micro-batch by its share so the step's gradient is the mean over the group
                loss = task.loss(logits, targets) * (len(mb) / n_group)
                accelerator.backward(loss)
            step_loss += loss.detach().float()
        self.pending.append((state.step + 1, step_loss))
        if self.cfg.max_grad_norm is not None:
            run.clip_grad_norm_(self.cfg.max_grad_norm)
        run.optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16: the scaler skips steps with inf gradients
            run.scheduler.step()
        run.zero_grad()
        state.step += 1
        state.step_in_epoch += 1
        state.samples += n_group * world
        state.train_seconds += time.perf_counter() - t_step
        self.window_n += 1
        self.rows_in_step = n_group

    def after_step(self) -> bool:
        """Log, validate, early-stop, time budget, checkpoint; returns whether training stops now."""
        state, cfg = self.state, self.cfg
        at_end = state.step >= self.total_steps
        end_of_epoch = state.step_in_epoch >= self.steps_per_epoch
        if state.step % cfg.log_every == 0 or at_end:
            self.log_train()
        evaluated = state.step % self.eval_every == 0 or at_end or (cfg.eval_every is None and end_of_epoch)
        if evaluated:
            self.validate()
        patience = cfg.early_stopping.patience
        early = evaluated and patience is not None and state.bad_evals >= patience
        if early:
            log.info(
                "early stopping at step %d: no %s improvement in %d evaluations", state.step, self.main_metric, patience
            )
        out_of_time = self.budget_s is not None and not (at_end or early) and self.out_of_time()
        if out_of_time:
            log.info(
                "train.time_budget %s: stopping at step %d with a resumable checkpoint (--resume)",
                cfg.time_budget,
                state.step,
            )
            if not evaluated:
                self.validate()
                evaluated = True
        state.done = at_end or early
        if evaluated or state.step % self.ckpt_every == 0 or state.done or self.interrupt.requested:
            self.checkpoint()
        for cb in self.callbacks:
            cb.on_step_end(state)
        if self.interrupt.requested:
            raise TrainingInterrupted(f"interrupted at step {state.step}; continue with --resume {self.run_dir}")
        if end_of_epoch:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
        return state.done or out_of_time

    def out_of_time(self) -> bool:
        """Stop while there is time for one more step (the average so far) and the final evaluation."""
        elapsed = time.perf_counter() - self.t_start
        late = elapsed + 2 * elapsed / max(1, self.state.step - self.first_step) > self.budget_s
        if self.run.plan.world > 1:  # clocks differ between processes: the main process decides for all
            decision = [late]
            torch.distributed.broadcast_object_list(decision, src=0)
            late = decision[0]
        return late

    def settle(self) -> None:
        """Reads the pending steps' losses in one transfer and stops at the first non-finite one."""
        if not self.pending:
            return
        values = torch.stack([loss for _, loss in self.pending]).tolist()
        bad = next((step for (step, _), v in zip(self.pending, values, strict=True) if not math.isfinite(v)), None)
        self.pending.clear()
        if bad is not None:
            raise TextuneError(
                f"training: non-finite loss at step {bad}; the last good checkpoint is kept in "
                f"{self.run_dir / layout.LAST_CHECKPOINT}; lower train.lr or use train.precision: fp32"
            )
        self.window_loss += sum(values)
        self.last_loss = values[-1]
        self.state.log_window = (self.window_loss, self.window_n)

    def log_train(self) -> None:
        self.settle()
        state = self.state
        rec = {
            "step": state.step,
            "epoch": round(state.epoch + state.step_in_epoch / self.steps_per_epoch, 4),
            "split": "train",
            "loss": self.window_loss / self.window_n,
            "lr": max(self.run.scheduler.get_last_lr()),  # the peak (the head's, under layer-wise decay)
            "samples_per_s": self.window_n
            and self.rows_in_step * self.window_n / (time.perf_counter() - self.t_window),
        }
        if self.is_main:
            layout.append_history(self.run_dir, rec)
            self.trackers.log(rec)
        self.window_loss, self.window_n, self.t_window = 0.0, 0, time.perf_counter()
        state.log_window = (0.0, 0)

    def validate(self) -> None:
        """Evaluates, logs, tells the callbacks and keeps the best weights so far."""
        self.settle()
        state = self.state
        metrics = evaluate(self.run, self.data.task, self.data.splits["validation"], self.cfg.eval_batch_size)
        if self.is_main:
            rec = {"step": state.step, "split": "validation", **metrics}
            layout.append_history(self.run_dir, rec)
            self.trackers.log(rec)
        for cb in self.callbacks:
            cb.on_evaluate(state.step, metrics)
        value = metrics[self.main_metric]
        if state.best is None or (value > state.best if self.mode == "max" else value < state.best):
            state.best, state.best_step, state.bad_evals = value, state.step, 0
            if self.is_main:
                save_best(self.run.accelerator.unwrap_model(self.run.model), self.data.tokenizer, self.run_dir)
        else:
            state.bad_evals += 1

    def checkpoint(self) -> None:
        self.settle()  # never save weights a non-finite step has touched
        run = self.run
        # every process's dropout stream must resume where it stopped: the main process saves them all
        rngs = [rng_state()]
        if run.plan.world > 1:
            rngs = [None] * run.plan.world
            torch.distributed.all_gather_object(rngs, rng_state())
        if self.is_main:
            save_checkpoint(
                self.run_dir / layout.LAST_CHECKPOINT,
                run.accelerator.unwrap_model(run.model),
                run.optimizer,
                run.scheduler,
                self.state.as_dict(),
                rngs,
                scaler=run.accelerator.scaler,
            )
