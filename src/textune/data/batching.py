"""Batches: length-grouped shuffled steps for training, length-sorted batches for inference."""

from __future__ import annotations

import numpy as np
import torch

from textune.data.tokenize import Encoded

# Texts are sorted by length inside windows of this many steps: enough to remove most padding,
# small enough that each epoch stays a random permutation of the data.
GROUP_WINDOW = 50


def train_steps(
    lengths: np.ndarray,
    seed: int,
    epoch: int,
    rows: int = 32,
    accum: int = 1,
    group_by_length: bool = True,
    max_tokens: int | None = None,
) -> list[list[np.ndarray]]:
    """The optimizer steps of one epoch, each a list of micro-batches (row indices); a pure function of
    (seed, epoch), so resuming recomputes the same order.

    By rows: each step holds ``rows`` rows, split into ``accum`` micro-batches. The rows of a step do not depend
    on ``accum``, so a run may change its micro-batch size (``batch_size: auto`` on another device) and still
    see the same data in the same steps.
    By tokens (``max_tokens``, as fairseq's ``--max-tokens``): the epoch's shuffled rows are sorted by length
    and cut into micro-batches of at most ``max_tokens`` padded tokens (rows x longest); ``accum`` neighbouring
    micro-batches make a step, and the steps are shuffled. Lengths alone decide where the cuts fall, so every
    epoch has the same number of steps.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).numpy()
    if max_tokens is not None:
        micro = _cut_by_tokens(perm[np.argsort(-lengths[perm], kind="stable")], lengths, max_tokens)
        steps = [micro[i : i + accum] for i in range(0, len(micro), accum)]
    else:
        groups: list[np.ndarray] = []
        window = rows * GROUP_WINDOW if group_by_length else len(perm)
        for start in range(0, len(perm), max(window, 1)):
            chunk = perm[start : start + window]
            if group_by_length:  # stable sort: equal lengths keep their random order
                chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            groups.extend(chunk[i : i + rows] for i in range(0, len(chunk), rows))
        steps = [[part for part in np.array_split(grp, accum) if len(part)] for grp in groups]
        if not group_by_length:
            return steps
    order = torch.randperm(len(steps), generator=g).numpy()
    return [steps[i] for i in order]


def _cut_by_tokens(order: np.ndarray, lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Cuts rows sorted longest first into batches of at most ``max_tokens`` padded tokens (a row longer than
    the budget gets a batch of its own)."""
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        n = max(1, max_tokens // longest)
        batches.append(order[start : start + n])
        start += n
    return batches


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


def move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Moves a tensor to ``device``; to a GPU through pinned memory with a non-blocking copy, so the host can
    collate the next batch while the copy runs."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: move(v, device) for k, v in batch.items()}
