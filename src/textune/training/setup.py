"""Setting up a training run: the accelerator, the model, the optimizer and schedule, and the plan of steps
(including ``batch_size: auto``'s memory probe)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from textune._seed import seed_everything
from textune.data.batching import train_steps
from textune.device import resolve_precision
from textune.models.build import build_model, encoder_layers, fusion_spec
from textune.models.dropout import use_fast_dropout
from textune.models.embedding_grad import EmbeddingGradBuffer, keep_embedding_grad, zero_grad
from textune.models.first_token import first_token_last_layer
from textune.models.infer import pad_id_of
from textune.models.peft import count_total, count_trainable, parameter_table
from textune.prepare import Prepared
from textune.recipe import Recipe, TrainConfig
from textune.training.batch_size import find_micro_batch, plan_micro_batches, rows_and_accum, trial_step
from textune.training.optim import build_optimizer, build_scheduler
from textune.training.trackers import accelerator_kwargs

log = logging.getLogger(__name__)


def make_accelerator(requested: str, report_to: list[str] | None = None, run_dir: Path | None = None) -> Accelerator:
    """An Accelerator with the resolved precision, logging to the ``report_to`` trackers (TensorBoard under
    ``run_dir``). Accelerate keeps its state process-wide; it is reset so that several runs in one process (the
    Python API, a search) may use different precisions."""
    from accelerate.state import AcceleratorState, PartialState

    # cpu=True lets Accelerate see a torchrun world on a machine without GPUs (gloo); alone it changes nothing
    device = PartialState(cpu=not torch.cuda.is_available()).device
    precision = resolve_precision(requested, device)
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, **accelerator_kwargs(report_to or [], run_dir))


@dataclass
class StepPlan:
    """Which rows each optimizer step trains on: a pure function of (seed, epoch), planned once per epoch."""

    cfg: TrainConfig
    lengths: np.ndarray
    rows_per_step: int
    accum: int
    world: int
    micro_size: int | None = None
    _planned: dict[int, list[list[np.ndarray]]] = field(default_factory=dict, repr=False)

    def epoch(self, epoch: int) -> list[list[np.ndarray]]:
        """The epoch's steps, each a list of micro-batches (``accum`` is final once the batch size is known)."""
        if epoch not in self._planned:
            self._planned.clear()
            c = self.cfg
            self._planned[epoch] = train_steps(
                self.lengths, c.seed, epoch, self.rows_per_step, self.accum, c.group_by_length, c.max_tokens
            )
        return self._planned[epoch]

    @property
    def steps_per_epoch(self) -> int:
        # under N processes each optimizer step consumes N groups of micro-batches, one per process
        return math.ceil(len(self.epoch(0)) / self.world)

    @property
    def total_steps(self) -> int:
        return self.cfg.max_steps or max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))

    def set_micro_batch(self, micro: int) -> None:
        """``batch_size: auto`` found ``micro`` rows to fit: split each step into that many micro-batches."""
        self.accum = plan_micro_batches(self.rows_per_step, micro)
        self._planned.clear()  # steps planned before the probe split into the old number of micro-batches
        self.micro_size = math.ceil(self.rows_per_step / self.accum)

    def describe(self) -> dict[str, Any]:
        tokens = self.cfg.max_tokens
        return {
            "rows_per_step": None if tokens else self.rows_per_step,
            "micro_batch_size": self.micro_size,
            "micro_batches_per_step": self.accum,
            "max_tokens": tokens,
        }


@dataclass
class Setup:
    """Everything the loop trains with."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    plan: StepPlan
    params: dict[str, Any]
    pad_id: int
    embedding_grad: EmbeddingGradBuffer | None = None

    def zero_grad(self) -> None:
        zero_grad(self.optimizer, self.embedding_grad)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """The model's gradients clipped to ``max_norm`` (Accelerate's, which unscales fp16 gradients first; with the
        embedding buffer, its row-wise clipping after the same unscaling); returns the norm before clipping."""
        if self.embedding_grad is None:
            return self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        self.accelerator.unscale_gradients()
        return self.embedding_grad.clip_grad_norm_(self.model.parameters(), max_norm)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def precision(self) -> str:
        return self.accelerator.mixed_precision


def setup(recipe: Recipe, data: Prepared, run_dir: Path | None = None) -> Setup:
    """Accelerator, model (seeded again, so the head's initialisation does not depend on data loading),
    optimizer, schedule and the step plan; with ``batch_size: auto`` the micro-batch size is probed here.
    ``run_dir`` is where the recipe's trackers (``train.report_to``) write their local files."""
    cfg = recipe.train
    accelerator = make_accelerator(cfg.precision, cfg.report_to, run_dir)
    seed_everything(cfg.seed)
    task = data.task
    model, peft_report = build_model(recipe, task.model_kwargs(), fusion_spec(recipe, task, data.featurizer))
    params = {
        "total": count_total(model),
        "trainable": count_trainable(model),
        "modules": parameter_table(model),
        "peft": peft_report.as_dict(),
    }
    for note in peft_report.notes:
        log.info("note: %s", note)
    rows_per_step, accum = rows_and_accum(cfg)
    train_split = data.splits["train"]
    plan = StepPlan(cfg, train_split.encoded.lengths, rows_per_step, accum, accelerator.num_processes)
    plan.micro_size = None if cfg.max_tokens else math.ceil(rows_per_step / accum)
    backbone = model.encoder if hasattr(model, "fusion") else model  # the transformer (under textune's fusion head)
    embedding_grad = None
    if accelerator.device.type == "cpu" and not cfg.compile:
        use_fast_dropout(model)  # CPU dropout draws 4x fewer random numbers (inductor draws its own when compiling)
        if accelerator.num_processes == 1:  # DDP's buckets take dense gradients
            embedding_grad = keep_embedding_grad(backbone)
    if first_token_last_layer(model, encoder_layers(backbone)):
        log.info("the head reads the first token only: the last layer computes that token's row while training")
    optimizer = build_optimizer(model, cfg, accelerator.device)
    scheduler = build_scheduler(optimizer, cfg, plan.total_steps)
    if cfg.gradient_checkpointing:
        backbone.gradient_checkpointing_enable()
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id = pad_id_of(data.tokenizer)
    if cfg.batch_size == "auto":
        _probe_batch_size(accelerator, model, optimizer, data, plan, pad_id)
    if cfg.compile:
        model = torch.compile(model)
    return Setup(accelerator, model, optimizer, scheduler, plan, params, pad_id, embedding_grad)


def _probe_batch_size(accelerator: Accelerator, model, optimizer, data: Prepared, plan: StepPlan, pad_id: int) -> None:
    """``batch_size: auto``: the largest micro-batch whose trial step fits, agreed by every process."""
    device = accelerator.device
    try_step = trial_step(
        accelerator.unwrap_model(model),
        getattr(optimizer, "optimizer", optimizer),
        data.task,
        data.splits["train"],
        pad_id,
        device,
        accelerator.autocast,
    )
    micro = find_micro_batch(plan.rows_per_step, try_step, str(device))
    if plan.world > 1:  # every process splits its steps alike: the smallest size found anywhere
        found = torch.tensor([micro], device=device)
        torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MIN)
        micro = int(found.item())
    plan.set_micro_batch(micro)
    log.info(
        "train.batch_size auto: micro-batches of %d rows, %d per step of %d rows",
        plan.micro_size,
        plan.accum,
        plan.rows_per_step,
    )
