"""A first-token head's last layer: the first token's row alone.

BERT's pooler and the sequence-classification heads of RoBERTa, XLM-R, CamemBERT and ELECTRA (and textune's head
with ``pooling: cls``) read only the first token of the last layer's output. In that layer the other tokens' queries,
attention outputs and feed-forward rows feed nothing: only their keys and values reach the first token.
``first_token_last_layer`` makes the last layer compute the first token's row alone while training:

- the same arithmetic on the row that matters, dropout included: a CPU dropout mask (``FastDropout``, textune's
  attention dropout) is drawn for the whole tensor and its first row kept, so a seeded run draws exactly the masks
  it drew with the full layer (tests compare the two, losses and gradients);
- 10 of the layer's 12 ``hidden x hidden`` products per token skipped (the keys and values are still computed for
  every token): 1/7 of a 6-layer model's linear FLOPs, plus the layer's attention, GELU, layer norms and dropout.

In evaluation mode the layer is full, except inside ``first_token_logits(model)``, which textune's logits inference
(``infer_logits``: validation, test predictions, ``textune predict``, serving) enters, since there too only the
head's output is read. Everything else (hidden states, embeddings, ONNX exports) gets the full layer. Architectures
whose layers are not BERT-shaped (DeBERTa's relative attention, DistilBERT...) and heads that read every token (mean
or attention pooling) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from textune.models.dropout import ATTENTION, FastDropout, _attention, fast_dropout

# the architectures' own heads that read only token 0 of the last hidden state
FIRST_TOKEN_HEADS = {
    "BertForSequenceClassification",  # BertPooler: hidden_states[:, 0]
    "RobertaForSequenceClassification",  # RobertaClassificationHead: features[:, 0, :]
    "XLMRobertaForSequenceClassification",
    "CamembertForSequenceClassification",
    "ElectraForSequenceClassification",
}
# what an encoder may pass its layers that a BERT layer's self-attention does not read; any other argument that is
# set (cross-attention, caches, attention outputs asked for) runs the full layer
_IGNORED_KWARGS = {"use_cache", "cache_position", "position_ids"}
_SUBLAYER = ("dense", "dropout", "LayerNorm")  # BERT's SelfOutput and Output


def reads_first_token_only(model: nn.Module) -> bool:
    """Whether ``model``'s head reads only the first token of the encoder's last layer (PEFT wrappers seen through)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fusion = getattr(base, "fusion", None)
    if fusion is not None:  # textune's head: pools the encoder's last hidden state itself
        return getattr(fusion, "pooling", None) == "cls"
    return type(base).__name__ in FIRST_TOKEN_HEADS


def _bert_shaped(layer: nn.Module) -> bool:
    """A BERT-family encoder layer: self-attention (query/key/value), output and feed-forward sub-layers of BERT's
    shape, absolute positions, no cross-attention, no chunked feed-forward."""
    attention = getattr(layer, "attention", None)
    sa, out = getattr(attention, "self", None), getattr(attention, "output", None)
    return (
        all(isinstance(getattr(sa, n, None), nn.Module) for n in ("query", "key", "value", "dropout"))
        and hasattr(sa, "attention_head_size")
        and hasattr(sa, "scaling")
        and getattr(sa, "position_embedding_type", "absolute") == "absolute"
        and all(isinstance(getattr(m, n, None), nn.Module) for m in (out, layer.output) for n in _SUBLAYER)
        and isinstance(getattr(layer, "intermediate", None), nn.Module)
        and not getattr(layer, "is_decoder", False)
        and not getattr(layer, "add_cross_attention", False)
        and not getattr(layer, "chunk_size_feed_forward", 0)
    )


def first_token_last_layer(model: nn.Module, layers: nn.ModuleList | None) -> bool:
    """Makes the last of ``layers`` compute only the first token's row while training, where ``model``'s head reads
    nothing else and the layer is BERT-shaped. Returns whether it did."""
    if layers is None or not len(layers) or not reads_first_token_only(model):
        return False
    last = layers[-1]
    if not _bert_shaped(last):
        return False
    if not isinstance(last, _FirstTokenLayer):
        last.__class__ = _first_token_class(type(last))  # same attributes and state dict, new forward
    return True


_CLASSES: dict[type, type] = {}


def _first_token_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"FirstToken{cls.__name__}", (_FirstTokenLayer, cls), {})
    return _CLASSES[cls]


@contextmanager
def first_token_logits(model: nn.Module) -> Iterator[None]:
    """Within this block a model prepared by ``first_token_last_layer`` computes the first token's row in evaluation
    mode too: for reading its logits, nothing else."""
    layers = [m for m in model.modules() if isinstance(m, _FirstTokenLayer)]
    for layer in layers:
        layer.first_token_eval = True
    try:
        yield
    finally:
        for layer in layers:
            layer.first_token_eval = False


class _FirstTokenLayer(nn.Module):
    """Mixed in before a BERT-shaped layer's class: while training (or inside ``first_token_logits``), the output
    is the first token's row, ``[batch, 1, hidden]`` (what the head reads); otherwise the layer's own forward."""

    first_token_eval = False

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        implementation = self.attention.self.config._attn_implementation
        full = (
            not (self.training or self.first_token_eval)
            or implementation not in (ATTENTION, "sdpa")
            or any(a is not None for a in args)
            or any(v is not None and v is not False for k, v in kwargs.items() if k not in _IGNORED_KWARGS)
        )
        if full:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        sa, n = self.attention.self, hidden_states.shape[1]
        first = hidden_states[:, :1]
        b, d = hidden_states.shape[0], sa.attention_head_size
        query = sa.query(first).view(b, 1, -1, d).transpose(1, 2)
        key = sa.key(hidden_states).view(b, n, -1, d).transpose(1, 2)
        value = sa.value(hidden_states).view(b, n, -1, d).transpose(1, 2)
        if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] == n:
            attention_mask = attention_mask[:, :, :1]  # the first query's row of the mask
        context = _first_query_attention(sa, query, key, value, attention_mask, n, implementation)
        context = context.reshape(b, 1, -1)
        attention_output = _sublayer(self.attention.output, context, first, n)
        return _sublayer(self.output, self.intermediate(attention_output), attention_output, n)


def _first_query_attention(sa, query, key, value, mask, n: int, implementation: str) -> torch.Tensor:
    p = sa.dropout.p if sa.training else 0.0
    if implementation == ATTENTION:  # textune's CPU attention: the first row of the n-query dropout mask
        return _attention(sa, query, key, value, mask, dropout=p, scaling=sa.scaling, full_queries=n)[0]
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(sa, query, key, value, mask, dropout=p, scaling=sa.scaling)[0]


def _sublayer(module: nn.Module, x: torch.Tensor, residual: torch.Tensor, n: int) -> torch.Tensor:
    """BERT's ``SelfOutput`` / ``Output``: ``LayerNorm(dropout(dense(x)) + residual)`` on the first row of an
    ``n``-token tensor."""
    return module.LayerNorm(first_rows_dropout(module.dropout, module.dense(x), n) + residual)


def first_rows_dropout(dropout: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """``dropout(x)`` for the first rows (dim 1) of an ``n``-row tensor: ``FastDropout`` draws the whole tensor's mask
    and keeps its first rows, the values the whole tensor's dropout gives them; any other module is applied to
    ``x`` (its random stream then differs from the full layer's)."""
    if type(dropout) is FastDropout:
        return fast_dropout(x, dropout.p, dropout.training, full_rows=n)
    return dropout(x)
