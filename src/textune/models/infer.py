"""The one inference path: length-sorted batches under the run's precision, outputs restored to input order.

Training's validation passes, the final predictions of a run, the Predictor (and so ``predict``, ``evaluate``,
the REST-free Python API), the frozen encoder of ``embed`` and the embedding features all call into this module,
so a run's saved predictions and a later ``textune predict`` on the same rows run the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from textune.data.batching import collate, inference_batches, to_device
from textune.data.tokenize import Encoded
from textune.models.first_token import first_token_logits
from textune.models.fusion import pool_tokens


def autocast_for(device: torch.device, precision: str):
    """An autocast context for Accelerate-style precision names (``no|bf16|fp16``)."""
    if precision == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@torch.inference_mode()
def _infer(
    model: torch.nn.Module,
    encoded: Encoded,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    precision: str,
    extras: dict[str, np.ndarray] | None,
    rows: np.ndarray | None,
    read: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    progress=None,
) -> np.ndarray:
    """``read(model output, batch)`` for every row of ``encoded`` (or only ``rows``; the others stay 0), in input
    order. Batches run longest first; each result is scattered back to its own row."""
    model.eval()
    out: np.ndarray | None = None
    rows = np.arange(len(encoded)) if rows is None else np.asarray(rows)
    for sub in inference_batches(encoded.lengths[rows], batch_size):
        idx = rows[sub]
        batch = to_device(collate(encoded, idx, pad_id, extras), device)
        with autocast_for(device, precision):
            result = read(model(**batch), batch)
        result = result.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(encoded), result.shape[1]), dtype=np.float32)
        out[idx] = result  # scatter back: row i of the output is input row i
        if progress is not None:
            progress.update(len(idx))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def infer_logits(
    model: torch.nn.Module,
    encoded: Encoded,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    precision: str = "no",
    extras: dict[str, np.ndarray] | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """The model's outputs (logits) for every row of ``encoded`` (or only ``rows``), in input order (a first-token
    head's last layer computing that token alone: ``models/first_token.py``)."""
    with first_token_logits(model):
        return _infer(model, encoded, batch_size, device, pad_id, precision, extras, rows, lambda out, _: out.logits)


def _pool(pooling: str) -> Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]:
    def read(out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = out.last_hidden_state.float()  # pool in fp32 whatever the autocast: sums over 512 tokens lose bits
        return pool_tokens(hidden, batch["attention_mask"], pooling)

    return read


def infer_hidden(
    model: torch.nn.Module,
    encoded: Encoded,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    precision: str = "no",
    pooling: str = "mean",
    progress=None,
) -> np.ndarray:
    """Pooled last hidden states of a bare encoder (``mean`` over real tokens, or the first token), input order."""
    return _infer(model, encoded, batch_size, device, pad_id, precision, None, None, _pool(pooling), progress)
