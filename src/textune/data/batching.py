"""Batches: length-grouped shuffled batches for training, length-sorted batches for inference."""

from __future__ import annotations

import numpy as np
import torch

from textune.data.tokenize import Encoded

# Texts are sorted by length inside windows of this many batches: enough to remove most padding,
# small enough that each epoch stays a random permutation of the data.
GROUP_WINDOW = 50


def train_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool = True
) -> list[np.ndarray]:
    """The micro-batches of one epoch, a pure function of (seed, epoch): resuming recomputes the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).numpy()
    if not group_by_length:
        return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    window = batch_size * GROUP_WINDOW
    batches: list[np.ndarray] = []
    for start in range(0, len(perm), window):
        chunk = perm[start : start + window]
        # stable sort so equal lengths keep their random order
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=g).numpy()
    return [batches[i] for i in order]


def inference_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices sorted by length (longest first, so a memory problem shows at once), cut into batches.

    Callers must scatter results back with these indices: outputs are in sorted order.
    """
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(
    encoded: Encoded, idx: np.ndarray, pad_id: int, extras: dict[str, np.ndarray] | None = None
) -> dict[str, torch.Tensor]:
    """Pads the rows ``idx`` to the longest among them (dynamic padding); adds rows ``idx`` of each extra."""
    rows = [encoded.row(i) for i in idx]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if encoded.type_ids is not None:
        types = np.zeros((len(rows), width), dtype=np.int64)
        for j, i in enumerate(idx):
            t = encoded.type_row(i)
            types[j, : len(t)] = t
        batch["token_type_ids"] = torch.from_numpy(types)
    for name, values in (extras or {}).items():
        batch[name] = torch.from_numpy(np.ascontiguousarray(values[idx]))
    return batch
