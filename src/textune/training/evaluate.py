"""Validation during training: every process scores its share of the rows, the shares are gathered once."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from textune.models.infer import infer_logits
from textune.prepare import Split
from textune.tasks import Task
from textune.training.setup import Setup


def evaluate(run: Setup, task: Task, split: Split, batch_size: int) -> dict[str, float]:
    """The task's metrics (uncalibrated) and its loss on ``split``, with the training model as it is now.

    Each process infers its share of the rows on the unwrapped model (DDP's forward would synchronise buffers
    on every call, and the shares need different numbers of calls); the shares are then gathered, so every
    validation row counts exactly once.
    """
    accelerator = run.accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    rows = np.arange(len(split.encoded))[rank::world]
    logits = infer_logits(
        accelerator.unwrap_model(run.model),
        split.encoded,
        batch_size,
        run.device,
        run.pad_id,
        run.precision,
        split.extras,
        rows=rows,
    )
    if world > 1:
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, (rows, logits[rows]))
        for part_rows, part in parts:
            logits[part_rows] = part
    logits = task.combine_outputs(logits, split.encoded)
    metrics = task.metrics(logits, split.targets)
    with torch.no_grad():
        metrics["loss"] = float(task.loss(torch.from_numpy(logits), torch.from_numpy(split.targets)))
    return metrics
