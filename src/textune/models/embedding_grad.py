"""The word-embedding gradient kept in one buffer between CPU steps: same gradient, no 47 MB fill per step.

A word embedding's dense gradient (vocabulary x hidden: 30522 x 384 floats, 47 MB, for MiniLM) is allocated,
zero-filled and freed at every step. On CPU the fill lands on freshly mapped pages: ~7 ms of a ~230 ms bf16 step of
MiniLM on 2 cores (``benchmarks/profile_step.py --precision bf16``). With ``nn.Embedding(sparse=True)`` the backward
yields only the rows the batch used, and autograd adds those into an existing dense ``.grad``; keeping that buffer
between steps (zeroed in place) hands gradient clipping and the optimizer the same dense gradient, its per-row sums
taken in another order. Weight decay and Adam's moments still see every row, as with the dense gradient. Zeroing
and gradient clipping read and write only the rows the step looked up (a few thousand of 30,522): the full-size
norm, scaling and zeroing took ~4 ms of the step.

For one CPU process only: GPUs fill memory fast, and DDP's gradient buckets expect dense gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class EmbeddingGradBuffer:
    """Turns ``embedding`` sparse and gives its weight a dense ``.grad`` buffer that ``zero_grad`` keeps.

    The buffer also knows which rows a step's backward can have written (the token ids its forwards looked up), so
    zeroing it and clipping by norm read and write those rows only: the rest of the buffer is zero.
    """

    def __init__(self, embedding: nn.Embedding):
        embedding.sparse = True
        self.weight = embedding.weight
        self.buffer = torch.zeros_like(self.weight)
        self.weight.grad = self.buffer
        self._rows: list[torch.Tensor] | None = []  # ids looked up since the last zeroing; None: any row may be set
        self._unique: torch.Tensor | None = None  # _rows made unique, once a step for clipping and zeroing
        embedding.register_forward_pre_hook(self._record_ids, with_kwargs=True)
        self.weight.register_hook(self._check_layout)
        # wherever a step starts without the buffer (a code path that set it to None), the sparse gradient is made
        # dense at once: clipping and the fused optimizers take no sparse gradients
        self.weight.register_post_accumulate_grad_hook(_densify)

    def _record_ids(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._rows is None or not torch.is_grad_enabled():
            return
        ids = args[0] if args else kwargs.get("input")
        self._unique = None
        if isinstance(ids, torch.Tensor):
            self._rows.append(ids.reshape(-1))
        else:  # a call this hook cannot read: any row may be set until the next zeroing
            self._rows = None

    def _check_layout(self, grad: torch.Tensor) -> None:
        if not grad.is_sparse:  # the weight used elsewhere too (tied to an output layer): any row may be set
            self._rows = None

    def _touched(self) -> torch.Tensor | None:
        """The buffer's rows that may be non-zero (sorted, unique), or None where that is not known."""
        if self._rows is None or self.weight.grad is not self.buffer:
            return None
        if self._unique is None:
            ids = torch.cat(self._rows) if self._rows else torch.empty(0, dtype=torch.long, device=self.buffer.device)
            self._unique = torch.unique(ids)
        return self._unique

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.zero_grad(set_to_none=True)``, except that the embedding's buffer is zeroed and kept."""
        grad, rows = self.weight.grad, self._touched()
        optimizer.zero_grad(set_to_none=True)
        if grad is not None and grad.layout == torch.strided:
            if rows is not None:
                grad.index_fill_(0, rows, 0.0)
            else:
                grad.zero_()
            self.weight.grad = self.buffer = grad
        self._rows, self._unique = [], None

    def clip_grad_norm_(self, parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)`` (2-norm) over an iterable of parameters, the
        embedding among them: its buffer's norm and scaling over the touched rows only, and no scaling pass where
        the coefficient is 1 (on the CPU, reading the norm costs no device sync). A NaN or infinite norm scales
        every gradient as torch's does, except that the embedding's untouched rows stay zero where torch's would
        turn NaN: the step is ruined either way."""
        rows = self._touched()
        others = [p for p in parameters if p.grad is not None and p is not self.weight]
        grad = self.weight.grad
        part = None if grad is None else grad if rows is None else grad.index_select(0, rows)
        total = torch.nn.utils.get_total_norm([p.grad for p in others] + ([] if part is None else [part]))
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # torch's formula
        if not coef.item() >= 1.0:  # a NaN norm scales too
            torch.nn.utils.clip_grads_with_norm_(others, max_norm, total)
            if part is not None and rows is None:
                grad.mul_(coef)
            elif part is not None:
                grad.index_copy_(0, rows, part.mul_(coef))
        return total


def zero_grad(optimizer: torch.optim.Optimizer, buffer: EmbeddingGradBuffer | None) -> None:
    """The optimizer's gradients set to None, except the kept embedding buffer (where there is one), zeroed."""
    if buffer is not None:
        buffer.zero_grad(optimizer)
    else:
        optimizer.zero_grad(set_to_none=True)


def _densify(param: torch.Tensor) -> None:
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()


def keep_embedding_grad(model: nn.Module) -> EmbeddingGradBuffer | None:
    """An ``EmbeddingGradBuffer`` for ``model``'s trainable input embedding, or None where it has none (frozen under
    an adapter, or not a plain ``nn.Embedding``)."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if type(embedding) is not nn.Embedding or not embedding.weight.requires_grad or embedding.sparse:
        return None
    if embedding.max_norm is not None or embedding.scale_grad_by_freq:
        return None  # renormalising rows in the forward, or scaled gradients: left as they are
    return EmbeddingGradBuffer(embedding)
