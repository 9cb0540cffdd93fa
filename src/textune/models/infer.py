"""The one inference path: length-sorted batches under the run's precision, outputs restored to input order.

Training's validation passes, the final predictions of a run, the Predictor (and so ``predict``, ``evaluate``,
the REST-free Python API), the frozen encoder of ``embed`` and the embedding features all call into this module,
so a run's saved predictions and a later ``textune predict`` on the same rows run the same arithmetic.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from textune.data.batching import collate, inference_batches, to_device
from textune.data.tokenize import Encoded


def autocast_for(device: torch.device, precision: str):
    """An autocast context for Accelerate-style precision names (``no|bf16|fp16``)."""
    if precision == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@torch.inference_mode()
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
    """Model outputs for every row of ``encoded`` (or only ``rows``; the others stay 0), in input order.

    Batches run longest first; each output is scattered back to its own row.
    """
    model.eval()
    out: np.ndarray | None = None
    rows = np.arange(len(encoded)) if rows is None else np.asarray(rows)
    for sub in inference_batches(encoded.lengths[rows], batch_size):
        idx = rows[sub]
        batch = to_device(collate(encoded, idx, pad_id, extras), device)
        with autocast_for(device, precision):
            logits = model(**batch).logits
        logits = logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(encoded), logits.shape[1]), dtype=np.float32)
        out[idx] = logits  # scatter back: row i of the output is input row i
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out


@torch.inference_mode()
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
    model.eval()
    out: np.ndarray | None = None
    for idx in inference_batches(encoded.lengths, batch_size):
        batch = to_device(collate(encoded, idx, pad_id), device)
        with autocast_for(device, precision):
            hidden = model(**batch).last_hidden_state
        hidden = hidden.float()  # pool in fp32 whatever the autocast: sums over 512 tokens lose bits in bf16
        if pooling == "cls":
            vec = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if out is None:
            out = np.zeros((len(encoded), vec.shape[1]), dtype=np.float32)
        out[idx] = vec.cpu().numpy()  # scatter back: batches ran longest first
        if progress is not None:
            progress.update(len(idx))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
