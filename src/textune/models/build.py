"""Build the model a recipe describes (backbone + task head + PEFT), save its best weights, reload it."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from textune import _atomic, startup
from textune._seed import seed_everything
from textune.errors import TextuneError
from textune.models.backbone import load_classifier, load_config
from textune.models.peft import PeftReport, apply_peft
from textune.recipe import Recipe

log = logging.getLogger(__name__)

# Architectures `textune params` can size with no files at all (config defaults as published).
_ROBERTA = {
    "vocab_size": 50265,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
_DEBERTA_V3 = {
    "vocab_size": 128100,
    "relative_attention": True,
    "position_buckets": 256,
    "pos_att_type": ["p2c", "c2p"],
    "max_relative_positions": -1,
    "position_biased_input": False,
    "type_vocab_size": 0,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
}
KNOWN_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "roberta-base": ("roberta", _ROBERTA),
    "roberta-large": (
        "roberta",
        {
            **_ROBERTA,
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
        },
    ),
    "bert-base-uncased": ("bert", {}),
    "microsoft/deberta-v3-small": ("deberta-v2", {**_DEBERTA_V3, "num_hidden_layers": 6}),
    "microsoft/deberta-v3-base": ("deberta-v2", _DEBERTA_V3),
    "google/electra-small-discriminator": (
        "electra",
        {"embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    ),
}
KNOWN_CONFIGS["FacebookAI/roberta-base"] = KNOWN_CONFIGS["roberta-base"]


def config_for(recipe: Recipe, task_kwargs: dict[str, Any]):
    """The model config from the recipe's model (bundled, directory or cached hub id), else a known name."""
    from transformers import AutoConfig

    name = recipe.model.name
    try:
        return load_config(name, recipe.model.allow_network, recipe.model.trust_remote_code, **task_kwargs)
    except TextuneError:
        if name not in KNOWN_CONFIGS:
            raise
    model_type, kwargs = KNOWN_CONFIGS[name]
    return AutoConfig.for_model(model_type, **kwargs, **task_kwargs)


def build_from_config(
    recipe: Recipe, task_kwargs: dict[str, Any], fusion: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, PeftReport]:
    """The recipe's model with random weights on the meta device: sizes without memory or weights."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from textune.models.fusion import FusionModel

    config = config_for(recipe, task_kwargs)

    def build() -> torch.nn.Module:
        with torch.device("meta"):
            if fusion is not None:
                return FusionModel(AutoModel.from_config(config), fusion)
            return AutoModelForSequenceClassification.from_config(config)

    return apply_peft(build, recipe.model.peft)


def uses_own_head(recipe: Recipe) -> bool:
    """Whether the recipe asks for textune's head (a pooling choice or multi-sample dropout) without features."""
    return recipe.model.pooling != "auto" or recipe.model.multi_sample_dropout > 1


def fusion_spec(recipe: Recipe, task, featurizer) -> dict[str, Any] | None:
    """textune's head's shape: with tabular features the fusion MLP; with ``model.pooling`` or
    ``model.multi_sample_dropout`` alone one linear layer on the pooled vector; else None (the architecture's head).
    """
    if featurizer is None and not uses_own_head(recipe):
        return None
    head, model = recipe.features.head, recipe.model
    pooling = model.pooling if model.pooling != "auto" else head.pooling
    plain = featurizer is None  # no features: a linear head after dropout, as BERT's own classifier
    config = config_for(recipe, {}) if plain or model.multi_sample_dropout > 1 else None
    hidden_dropout = model.dropout if model.dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
    return {
        "numeric_dim": featurizer.numeric_dim if featurizer else 0,
        "cardinalities": featurizer.cardinalities if featurizer else [],
        "num_outputs": task.num_outputs,
        "widths": [] if plain else head.widths,
        "dropout": head.dropout,
        "layer_norm": head.layer_norm,
        "pooling": pooling,
        "input_dropout": float(hidden_dropout or 0.0) if config is not None else 0.0,
        "samples": model.multi_sample_dropout,
    }


def _load_fusion(recipe: Recipe, spec: dict[str, Any]) -> torch.nn.Module:
    from transformers import AutoModel

    from textune.models.backbone import apply_dropout, resolve_model_path
    from textune.models.fusion import FusionModel

    path = resolve_model_path(recipe.model.name)
    config = load_config(path, recipe.model.allow_network, recipe.model.trust_remote_code)
    apply_dropout(config, recipe.model.dropout)
    kwargs = {} if Path(path).exists() or recipe.model.allow_network else {"local_files_only": True}
    encoder = AutoModel.from_pretrained(path, config=config, trust_remote_code=recipe.model.trust_remote_code, **kwargs)
    return FusionModel(encoder, spec)


def _pretrained(
    recipe: Recipe, task_kwargs: dict[str, Any], fusion: dict[str, Any] | None, dropout: float | None = None
) -> torch.nn.Module:
    """The pretrained backbone with textune's head (``fusion``) or the architecture's own."""
    with startup.loading():
        if fusion is not None:
            return _load_fusion(recipe, fusion)
        model, _ = load_classifier(
            recipe.model.name,
            task_kwargs,
            allow_network=recipe.model.allow_network,
            trust_remote_code=recipe.model.trust_remote_code,
            dropout=dropout,
        )
        return model


def load_model_dir(path: Path) -> torch.nn.Module:
    """A saved model directory: the fusion model, or the architecture's own sequence-classification model."""
    from transformers import AutoModelForSequenceClassification

    from textune.models.fusion import FusionModel, is_fusion_dir

    with startup.loading():
        if is_fusion_dir(path):
            return FusionModel.from_pretrained(path)
        return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)


def build_model(
    recipe: Recipe, task_kwargs: dict[str, Any], fusion: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, PeftReport]:
    """The pretrained backbone with a fresh head (seeded), wrapped with PEFT if the recipe asks.

    With ``fusion`` (see :func:`fusion_spec`) the head is the text + tabular fusion MLP instead; under LoRA it stays
    fully trainable and counts against the budget.
    """

    def build() -> torch.nn.Module:
        seed_everything(recipe.train.seed)  # same head initialisation whatever ran before
        model = _pretrained(recipe, task_kwargs, fusion, dropout=recipe.model.dropout)
        reinit_top_layers(model, recipe.model.reinit_layers)
        return model

    peft = recipe.model.peft
    if peft.method != "none" and peft.budget is not None:
        # Probing ranks on the real model would load the weights three times; the meta-device twin has the
        # same parameter shapes.
        _, report = build_from_config(recipe, task_kwargs, fusion)
        recipe = recipe.model_copy(deep=True)
        recipe.model.peft.alpha = report.alpha
        recipe.model.peft.r = report.r
        recipe.model.peft.budget = None
        model, final = apply_peft(build, recipe.model.peft)
        final.notes = report.notes
        return model, final
    return apply_peft(build, peft)


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The encoder's stack of transformer layers (BERT/RoBERTa/DeBERTa ``encoder.layer``, DistilBERT
    ``transformer.layer``...): the longest ModuleList of ``num_hidden_layers`` blocks, or None."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    return lists[0] if lists else None


def reinit_top_layers(model: torch.nn.Module, k: int) -> None:
    """Re-initialises the top ``k`` transformer layers with the architecture's own initialiser (``_init_weights``).

    Raises:
        TextuneError: ``k`` exceeds the layers the model has, or its layers cannot be found.
    """
    if k <= 0:
        return
    layers = encoder_layers(model)
    if layers is None:
        raise TextuneError("model.reinit_layers: cannot find this architecture's layer stack; set it to 0")
    if k > len(layers):
        raise TextuneError(f"model.reinit_layers: {k} exceeds the model's {len(layers)} layers; set it to at most that")
    pretrained = next(m for m in model.modules() if hasattr(m, "_init_weights"))
    for layer in layers[len(layers) - k :]:
        for tensor in [*layer.parameters(), *layer.buffers()]:
            # transformers 5's initialisers skip tensors flagged as loaded from the checkpoint
            if getattr(tensor, "_is_hf_initialized", False):
                tensor._is_hf_initialized = False
        layer.apply(pretrained._init_weights)


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_best(model: torch.nn.Module, tokenizer, run_dir: Path) -> None:
    """Best weights so far: the adapter (small, fast) for PEFT runs, the whole model otherwise."""
    target = run_dir / ("adapter" if is_peft(model) else "model")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=run_dir))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    spec = getattr(getattr(model, "base_model", None), "model", None)
    if is_peft(model) and hasattr(spec, "spec"):
        # the fusion head's shape travels with the adapter: merging rebuilds the head from it
        from textune.models.fusion import FUSION_JSON

        (tmp / FUSION_JSON).write_text(json.dumps(spec.spec, indent=1))
    _atomic.replace_dir(tmp, target)


def finalize_model(run_dir: Path, recipe: Recipe, task_kwargs: dict[str, Any]) -> None:
    """For PEFT runs, writes ``model/``: the adapter merged into the base weights, a standalone HF model."""
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        return
    merged = merge_adapter(adapter, recipe, task_kwargs)
    from transformers import AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=run_dir))
    merged.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(tmp)
    _atomic.replace_dir(tmp, run_dir / "model")


def merge_adapter(adapter: Path, recipe: Recipe, task_kwargs: dict[str, Any]) -> torch.nn.Module:
    from peft import PeftModel

    from textune.models.fusion import FUSION_JSON

    seed_everything(recipe.train.seed)
    spec = json.loads((adapter / FUSION_JSON).read_text()) if (adapter / FUSION_JSON).is_file() else None
    base = _pretrained(recipe, task_kwargs, spec)
    try:
        model = PeftModel.from_pretrained(base, adapter)
    except (OSError, ValueError) as exc:
        raise TextuneError(f"{adapter}: cannot load the adapter ({str(exc).splitlines()[0]})") from None
    return model.merge_and_unload()


def position_limit(config) -> int | None:
    """Tokens the model's position table holds, or None when positions are relative (no absolute table)."""
    if getattr(config, "position_biased_input", True) is False:  # DeBERTa-v2/v3: relative positions only
        return None
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or n <= 0:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"):
        # RoBERTa-style models count positions from padding_idx + 1: 514 entries hold 512 tokens
        n -= (getattr(config, "pad_token_id", 1) or 1) + 1
    return n


def check_max_length(name: str, max_length: int, tokenizer, allow_network: bool, trust_remote_code: bool) -> None:
    """``data.max_length`` must fit the model's position table: past it the forward pass fails mid-training.

    Raises:
        TextuneError: naming the key, the model's limit and the fix.
    """
    try:
        config = load_config(name, allow_network, trust_remote_code)
    except TextuneError:
        return  # the model loader reports a missing config with its own message
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise TextuneError(
            f"data.max_length: {max_length} tokens exceed what {name} can read ({limit} positions); set "
            f"data.max_length to at most {limit} (longer texts: data.truncation: head_tail or chunks)"
        )
