"""``train.batch_size: auto``: the largest micro-batch that fits in memory, found by Accelerate's
``find_executable_batch_size`` on trial steps over the longest training rows; gradient accumulation keeps the
rows per optimizer step (``train.effective_batch_size``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
from accelerate.utils import find_executable_batch_size

from textune.data.batching import collate, move, to_device
from textune.errors import TextuneError
from textune.recipe import TrainConfig

DEFAULT_EFFECTIVE = 32


def rows_and_accum(cfg: TrainConfig) -> tuple[int, int]:
    """Rows per optimizer step (per process) and micro-batches per step, before any memory probe."""
    if cfg.batch_size == "auto":
        return cfg.effective_batch_size or DEFAULT_EFFECTIVE, 1
    return cfg.batch_size * cfg.grad_accum, cfg.grad_accum


def find_micro_batch(rows: int, try_step: Callable[[int], None], where: str) -> int:
    """The largest micro-batch size <= ``rows`` for which ``try_step(size)`` runs without running out of memory
    (sizes shrink by 10% per failure, Accelerate's rule)."""

    @find_executable_batch_size(starting_batch_size=rows)
    def probe(batch_size: int) -> int:
        try_step(batch_size)
        return batch_size

    try:
        return probe()
    except RuntimeError as e:
        if "No executable batch size found" not in str(e):
            raise
        raise TextuneError(
            f"train.batch_size: auto: not even one of the longest training rows fits in memory on {where}; "
            "lower data.max_length or set train.gradient_checkpointing: true"
        ) from None


def trial_step(model, optimizer, task, split, pad_id: int, device: torch.device, autocast) -> Callable[[int], None]:
    """A function running one whole training step (forward, backward, optimizer step, so the optimizer's state
    is allocated too) on the ``n`` longest training rows, the worst case, and then undoing it: weights, optimizer
    state, gradients and random streams are as before, so a run with ``auto`` trains exactly like one given
    the size it found."""
    longest = np.argsort(-split.encoded.lengths, kind="stable")

    def step(n: int) -> None:
        idx = longest[:n]
        params = [p for p in model.parameters() if p.requires_grad]
        saved_weights = [p.detach().to("cpu", copy=True) for p in params]
        saved_optim = copy.deepcopy(optimizer.state_dict())
        rng_devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=rng_devices):
                batch = to_device(collate(split.encoded, idx, pad_id, split.extras), device)
                targets = move(torch.from_numpy(split.targets[idx]), device)
                model.train()
                with autocast():
                    loss = task.loss(model(**batch).logits, targets)
                loss.backward()
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
        finally:
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for p, w in zip(params, saved_weights, strict=True):
                    p.copy_(w)
            optimizer.load_state_dict(saved_optim)

    return step


def plan_micro_batches(rows: int, micro: int) -> int:
    """Micro-batches per step so that none holds more than ``micro`` rows."""
    return max(1, math.ceil(rows / micro))
