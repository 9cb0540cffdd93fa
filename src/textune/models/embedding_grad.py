"""The word-embedding gradient kept in one buffer between CPU steps: same gradient, no 47 MB fill per step.

A word embedding's dense gradient (vocabulary x hidden: 30522 x 384 floats, 47 MB, for MiniLM) is allocated,
zero-filled and freed at every step. On CPU the fill lands on freshly mapped pages: ~7 ms of a ~230 ms bf16 step of
MiniLM on 2 cores (``benchmarks/profile_step.py --precision bf16``). With ``nn.Embedding(sparse=True)`` the backward
yields only the rows the batch used, and autograd adds those into an existing dense ``.grad``; keeping that buffer
between steps (zeroed in place) hands gradient clipping and the optimizer the same dense gradient, its per-row sums
taken in another order. Weight decay and Adam's moments still see every row, as with the dense gradient.

For one CPU process only: GPUs fill memory fast, and DDP's gradient buckets expect dense gradients.
"""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingGradBuffer:
    """Turns ``embedding`` sparse and gives its weight a dense ``.grad`` buffer that ``zero_grad`` keeps."""

    def __init__(self, embedding: nn.Embedding):
        embedding.sparse = True
        self.weight = embedding.weight
        self.weight.grad = torch.zeros_like(self.weight)
        # wherever a step starts without the buffer (a code path that set it to None), the sparse gradient is made
        # dense at once: clipping and the fused optimizers take no sparse gradients
        self.weight.register_post_accumulate_grad_hook(_densify)

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.zero_grad(set_to_none=True)``, except that the embedding's buffer is zeroed and kept."""
        grad = self.weight.grad
        optimizer.zero_grad(set_to_none=True)
        if grad is not None and grad.layout == torch.strided:
            self.weight.grad = grad.zero_()


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
