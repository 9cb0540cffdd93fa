"""A cheaper dropout for CPU training: the same distribution, a quarter of the random numbers.

On CPU, ``torch.nn.functional.dropout`` draws one random number per element through ``bernoulli_``, single-threaded,
at ~4 ns an element: in a bf16 training step of MiniLM (where the matmuls are fast) that was 21% of the step's time
(``benchmarks/profile_step.py --precision bf16``). Here one 64-bit draw gives four 16-bit lanes, each compared with
the drop probability rounded to 1/65536 (0.1 -> 0.100006): the same Bernoulli mask (survivors scaled by the rounded
keep rate). On CPU the 64-bit words come from numpy's SFC64 (in isolation 1.8x as fast as torch's Mersenne Twister;
inside a training step 425 against 485 us a mask), seeded for each mask by one draw from torch's generator:
``torch.manual_seed``, checkpointed RNG states and activation checkpointing's replay decide the masks as they decide
any dropout's. The attention probabilities' dropout (inside SDPA on CPU) gets the same mask by
the ``textune_sdpa`` attention function: flash attention's numerics with this dropout while training
(``_DropoutAttention``), plain SDPA otherwise.

Only CPU training swaps modules in (``use_fast_dropout``); on GPUs the fused kernels are faster and stay.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_LANES = 4  # 16-bit lanes per 64-bit draw
_RESOLUTION = 1 << 16
ATTENTION = "textune_sdpa"


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A boolean mask of ``shape``, each element True with probability 1 - p (p rounded to 1/65536)."""
    n = shape.numel()
    words = -(-n // _LANES)
    if device.type == "cpu":
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        with torch.profiler.record_function("textune::sfc64_draws"):  # numpy's time, named in a profile
            draws = torch.from_numpy(np.random.SFC64(seed).random_raw(words).view(np.int64))
    else:
        draws = torch.empty(words, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = draws.view(torch.int16)[:n].view(shape)  # signed lanes, uniform on [-32768, 32767]
    return lanes >= round(p * _RESOLUTION) - _RESOLUTION // 2


def fast_dropout(x: torch.Tensor, p: float, training: bool = True, full_rows: int | None = None) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the mask drawn by ``keep_mask``. ``full_rows``: ``x`` is the first rows
    (dim 1) of that many; the mask is drawn for all of them and its first rows kept (``models/first_token.py``)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    if full_rows is None:
        keep = _keep_values(x.shape, p, x.dtype, x.device)
    else:
        keep = _keep_values(torch.Size((x.shape[0], full_rows, *x.shape[2:])), p, x.dtype, x.device)[:, : x.shape[1]]
    # survivors scaled by the keep rate the mask really has, so the mean is kept
    return x * keep * (1.0 / _keep_rate(p))


def _keep_rate(p: float) -> float:
    return 1.0 - round(p * _RESOLUTION) / _RESOLUTION


def _keep_values(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``keep_mask`` as 0/1 values of ``dtype``. A product with a bool tensor goes through a slow type-promoting
    path on CPU (~8x a same-dtype product); the uint8 view converts at copy speed."""
    return keep_mask(shape, p, device).view(torch.uint8).to(dtype)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same state dict: none) whose mask is drawn by ``keep_mask``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


# what an encoder's attention may pass that the eager path below honours; anything else (sliding windows, position
# biases, caches, soft caps) goes to SDPA unchanged
_PLAIN_KWARGS = {"is_causal", "output_attentions", "output_hidden_states", "return_dict", "position_ids", "use_cache"}


def _attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, full_queries=None, **kwargs
):
    """Eager attention with ``fast_dropout`` on the probabilities while training; plain SDPA otherwise
    (evaluation, prediction, anything beyond a plain bidirectional or masked attention). ``full_queries``: the
    queries are the first rows of that many (``models/first_token.py``); the dropout mask is drawn for all of them
    and its first rows kept."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (
        dropout == 0.0
        or not _PLAIN_KWARGS.issuperset(k for k, v in kwargs.items() if v is not None)
        or kwargs.get("is_causal", getattr(module, "is_causal", False))
        or getattr(module, "num_key_value_groups", 1) > 1
        or not query.dtype == key.dtype == value.dtype
        or (attention_mask is not None and attention_mask.requires_grad)  # a trained bias: its gradient is SDPA's
    )
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = query.size(-1) ** -0.5 if scaling is None else scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # SDPA's convention: True = attend
        bias = torch.zeros(attention_mask.shape, dtype=torch.float32, device=query.device)
        attention_mask = bias.masked_fill_(~attention_mask, torch.finfo(torch.float32).min)
    with torch.autocast(query.device.type, enabled=False):
        out = _DropoutAttention.apply(query, key, value, attention_mask, dropout, scale, full_queries)
    return out, None


class _DropoutAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias), dropped out, times v; output in the layout ``[batch, length, heads, dim]``.

    The numerics of flash attention (SDPA's fused kernels on GPUs, and on CPUs in inference): matmul inputs are values
    of the inputs' dtype (bf16 under autocast) and sums run in fp32; the scores (q k^T), the gradient of the
    probabilities (dO v^T), the softmax and its gradient stay in fp32 (those two matmuls run in fp32, where a product
    of two bf16 values is exact), and the probabilities are rounded to the inputs' dtype only as the weights of ``v``.
    A bf16 step so spends 2 of its 6 attention matmuls in fp32 instead of all 6 (SDPA's math kernel, the only
    CPU kernel with a dropout, upcasts everything); the attention of a MiniLM step on 2 cores takes ~30% less time.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, p: float, scale: float, full_queries: int | None = None):
        # the heads come in as transposed views: one copy each makes them contiguous (and fp32 where needed)
        q32 = q.to(torch.float32, memory_format=torch.contiguous_format)
        k32 = k.to(torch.float32, memory_format=torch.contiguous_format)
        scores = torch.matmul(q32, k32.transpose(2, 3)).mul_(scale)
        if bias is not None:
            scores = scores.add_(bias.float())
        probs = torch.softmax(scores, dim=-1)
        rows = probs.shape[2]
        shape = probs.shape if full_queries is None else torch.Size((*probs.shape[:2], full_queries, probs.shape[3]))
        keep = _keep_values(shape, p, torch.float32, probs.device)[:, :, :rows].mul_(1.0 / _keep_rate(p))
        weights = (probs * keep).to(q.dtype)
        v = v.contiguous()
        out = torch.matmul(weights, v)
        ctx.save_for_backward(q.contiguous(), k.contiguous(), v, probs, keep, weights)
        ctx.scale = scale
        return out.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):  # a backward called inside autocast: dtypes as set
            return _DropoutAttention._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v, probs, keep, weights = ctx.saved_tensors
        grad_out = grad_out.transpose(1, 2).contiguous()
        grad_v = torch.matmul(weights.transpose(2, 3), grad_out)
        grad_probs = torch.matmul(grad_out.float(), v.float().transpose(2, 3)).mul_(keep)  # fp32, as flash keeps it
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, torch.float32).mul_(ctx.scale).to(q.dtype)
        grad_q = torch.matmul(grad_scores, k)
        grad_k = torch.matmul(grad_scores.transpose(2, 3), q)
        return grad_q, grad_k, grad_v, None, None, None, None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_fast_dropout(model: nn.Module) -> int:
    """Swaps every ``nn.Dropout`` with 0 < p < 1 in ``model`` for ``FastDropout`` and, where the model runs SDPA
    attention, switches it to ``textune_sdpa``. Returns the number of dropout modules swapped."""
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout and 0.0 < module.p < 1.0:
            module.__class__ = FastDropout  # same attributes, new forward: no state dict or hook changes
            swapped += 1
    for module in model.modules():
        config = getattr(module, "config", None)
        # only models whose attention layers look their function up in transformers' AttentionInterface
        if getattr(module, "_supports_attention_backend", False) and config._attn_implementation == "sdpa":
            _register_attention()
            config._attn_implementation = ATTENTION
    return swapped
