"""textune's head: the pooled encoder output (CLS, masked mean or attention), concatenated with tabular features
when the recipe has them, then an MLP (or one linear layer) with optional multi-sample dropout.

Saved as a Hugging Face encoder directory (``encoder/``) plus ``fusion.safetensors`` and ``fusion.json``, so that the
encoder part stays loadable by any Hugging Face tool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

FUSION_JSON = "fusion.json"


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per row: the first token (``cls``) or the mean over the row's real tokens (``mean``)."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class FusionHead(nn.Module):
    def __init__(
        self,
        text_dim: int,
        numeric_dim: int,
        cardinalities: list[int],
        num_outputs: int,
        widths: list[int],
        dropout: float,
        layer_norm: bool,
        pooling: str = "mean",
        input_dropout: float = 0.0,
        samples: int = 1,
    ):
        super().__init__()
        self.pooling, self.samples = pooling, samples
        # attention pooling: one learned score per token, softmax over the row's real tokens
        self.attention = nn.Linear(text_dim, 1) if pooling == "attention" else None
        self.input_dropout = nn.Dropout(input_dropout)
        # embedding width grows slowly with the number of categories (the fastai rule of thumb, capped)
        self.embeddings = nn.ModuleList(nn.Embedding(n, min(32, round(1.6 * n**0.56))) for n in cardinalities)
        width = text_dim + numeric_dim + sum(e.embedding_dim for e in self.embeddings)
        layers: list[nn.Module] = []
        for w in widths:
            layers += (
                [nn.Linear(width, w)] + ([nn.LayerNorm(w)] if layer_norm else []) + [nn.GELU(), nn.Dropout(dropout)]
            )
            width = w
        layers.append(nn.Linear(width, num_outputs))
        self.mlp = nn.Sequential(*layers)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One vector per row from the encoder's tokens: the first token, the masked mean, or learned weights."""
        if self.pooling == "attention":
            mask = attention_mask.unsqueeze(-1)
            scores = self.attention(hidden).float().masked_fill(mask == 0, torch.finfo(torch.float32).min)
            return (torch.softmax(scores, dim=1).to(hidden.dtype) * hidden).sum(1)
        return pool_tokens(hidden, attention_mask, self.pooling)

    def forward(self, text: torch.Tensor, numeric: torch.Tensor | None, categorical: torch.Tensor | None):
        parts = [text]
        if numeric is not None and numeric.shape[1]:
            parts.append(numeric.to(text.dtype))
        if categorical is not None:
            parts += [emb(categorical[:, j]).to(text.dtype) for j, emb in enumerate(self.embeddings)]
        x = torch.cat(parts, dim=1)
        if self.training and self.samples > 1:
            # multi-sample dropout: the same rows under N masks, logits averaged (one pass each, shared weights)
            return torch.stack([self.mlp(self.input_dropout(x)) for _ in range(self.samples)]).mean(0)
        return self.mlp(self.input_dropout(x))


class FusionModel(nn.Module):
    """``encoder`` (an AutoModel) + ``fusion`` head. ``forward`` returns an object with ``.logits``."""

    def __init__(self, encoder: nn.Module, spec: dict[str, Any]):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config  # PEFT and Accelerate look for .config
        pooler = getattr(encoder, "pooler", None)
        if isinstance(pooler, nn.Module):
            # BERT/RoBERTa's pooler is never used here: frozen, so DDP does not wait for its gradients
            pooler.requires_grad_(False)
        self.spec = spec
        self.fusion = FusionHead(
            encoder.config.hidden_size,
            spec["numeric_dim"],
            spec["cardinalities"],
            spec["num_outputs"],
            spec["widths"],
            spec["dropout"],
            spec["layer_norm"],
            pooling=spec["pooling"],
            input_dropout=spec.get("input_dropout", 0.0),
            samples=spec.get("samples", 1),
        )

    def forward(self, input_ids, attention_mask, token_type_ids=None, numeric=None, categorical=None, **_: Any):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.config, "type_vocab_size", 0):
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        pooled = self.fusion.pool(hidden, attention_mask)
        return SequenceClassifierOutput(logits=self.fusion(pooled, numeric, categorical))

    def save_pretrained(self, path: str | Path, **kwargs: Any) -> None:
        path = Path(path)
        self.encoder.save_pretrained(path / "encoder", **kwargs)
        state = {k: v.detach().contiguous().cpu() for k, v in self.fusion.state_dict().items()}
        save_file(state, path / "fusion.safetensors")
        (path / FUSION_JSON).write_text(json.dumps(self.spec, indent=1))
        # a config.json at the top marks a complete model directory (the run directory checks for it)
        self.config.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> FusionModel:
        from transformers import AutoModel

        path = Path(path)
        spec = json.loads((path / FUSION_JSON).read_text())
        encoder = AutoModel.from_pretrained(path / "encoder", local_files_only=True)
        model = cls(encoder, spec)
        model.fusion.load_state_dict(load_file(path / "fusion.safetensors"))
        return model.eval()  # as Hugging Face's from_pretrained: loaded for inference, dropout off


def is_fusion_dir(path: str | Path) -> bool:
    return (Path(path) / FUSION_JSON).is_file()
