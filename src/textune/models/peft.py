"""LoRA through the PEFT library: target presets, a trainable-parameter budget, and the parameter report."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from textune.errors import TextuneError
from textune.recipe import PeftConfig

log = logging.getLogger(__name__)

# The LoRA paper's choice (query and value projections), by architecture: module names differ.
ATTENTION_PRESET = {
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
}
DEFAULT_ATTENTION = ["query", "value"]  # BERT, RoBERTa, ELECTRA, XLM-R, MiniLM


@dataclass
class PeftReport:
    """What applying PEFT decided, for the console, ``textune params`` and summary.json."""

    method: str
    r: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    head_modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "r": self.r,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
            "head_modules": self.head_modules,
            "notes": self.notes,
        }


def target_modules(model: torch.nn.Module, spec: str | list[str]) -> list[str] | str:
    if spec == "attention":
        return ATTENTION_PRESET.get(getattr(model.config, "model_type", ""), DEFAULT_ATTENTION)
    if spec == "all-linear":
        return "all-linear"
    if isinstance(spec, str):
        return [spec]
    return list(spec)


def _backbone_name(model: torch.nn.Module) -> str:
    """The child holding the pretrained encoder: ``bert``, ``roberta``, ``deberta``... or the fusion model's encoder."""
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(model, prefix, None), torch.nn.Module) else "encoder"


def _fresh_in_backbone(model: torch.nn.Module) -> list[str]:
    """Modules inside the backbone whose weights the checkpoint lacks (e.g. a pooler an MLM-only checkpoint never
    saved): from the loading info when the model was loaded with weights, else (the meta-device twin that
    ``textune params`` and the budget probes build from the config) from the checkpoint's tensor names."""
    from transformers import PreTrainedModel

    from textune.models.backbone import FRESH_ATTR, checkpoint_keys, fresh_modules, missing_from_checkpoint

    backbone = _backbone_name(model)
    if hasattr(model, FRESH_ATTR):
        names = getattr(model, FRESH_ATTR)
    elif isinstance(model, PreTrainedModel):  # not the fusion model: its encoder's pooler is never used
        keys = checkpoint_keys(getattr(model.config, "_name_or_path", "") or "")
        names = fresh_modules(model, missing_from_checkpoint(model, keys)) if keys else []
    else:
        names = []
    return [n for n in names if n.split(".", 1)[0] == backbone]


def head_modules(model: torch.nn.Module) -> list[str]:
    """Modules that train in full beside the adapters: every freshly initialised module.

    That is each top-level module besides the backbone that has weights (the task head: ``classifier``,
    DistilBERT's ``pre_classifier``, DeBERTa's ``pooler``, ``score``, the fusion head), plus modules inside the
    backbone that the checkpoint lacked. Found from the model's structure rather than a list of names, so a head
    with a new name is not left frozen at its random initialisation.
    """
    backbone = _backbone_name(model)
    names = [n for n, m in model.named_children() if n != backbone and any(True for _ in m.parameters())]
    return names + [n for n in _fresh_in_backbone(model) if n not in names]


def _in_head(name: str, heads: list[str]) -> str | None:
    return next((h for h in heads if name == h or name.startswith(h + ".")), None)


def _check_targets(model: torch.nn.Module, targets: list[str] | str) -> None:
    if targets == "all-linear":
        return
    names = [n for n, _ in model.named_modules()]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            from textune.errors import did_you_mean

            leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n})
            raise TextuneError(
                f"model.peft.target_modules: no module named '{t}' in this model{did_you_mean(t, leaves)}; "
                f"use 'attention', 'all-linear' or names such as {', '.join(target_modules(model, 'attention'))}"
            )


def _inside_head_notes(model: torch.nn.Module, targets: list[str] | str, heads: list[str], r: int) -> list[str]:
    """PEFT skips LoRA on a target inside a fully trainable head; say so and how many parameters that is."""
    if targets == "all-linear" or not heads:
        return []
    notes = []
    for name, module in model.named_modules():
        head = _in_head(name, heads)
        if not isinstance(module, torch.nn.Linear) or head is None:
            continue
        if any(name == t or name.endswith("." + t) for t in targets):
            skipped = r * (module.in_features + module.out_features)
            notes.append(
                f"LoRA target '{name}' sits inside the fully trainable head '{head}': PEFT trains it "
                f"in full and adds no adapter there (older PEFT versions also counted {skipped:,} LoRA parameters "
                f"on it: r={r} x ({module.in_features} + {module.out_features}))"
            )
    return notes


def _lora(model: torch.nn.Module, cfg: PeftConfig, r: int, alpha: float):
    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, cfg.target_modules)
    heads = head_modules(model) if cfg.train_head else []
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=cfg.dropout,
        bias=cfg.bias,
        target_modules=targets,
        modules_to_save=heads or None,
    )
    return get_peft_model(model, config), targets, heads


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_total(model: torch.nn.Module) -> int:
    """All parameters, counting once a head that PEFT keeps twice (a frozen ``original_module`` and its copy)."""
    return sum(p.numel() for n, p in model.named_parameters() if "original_module" not in n)


def solve_rank(build: Callable[[], torch.nn.Module], cfg: PeftConfig) -> int:
    """The largest rank whose trainable count fits ``cfg.budget``.

    Trainable parameters are linear in r (head + r * per-rank), so two probe builds (r=1, r=2) give the line.

    Raises:
        TextuneError: even r=1 exceeds the budget (the message says what would fit).
    """
    ratio = cfg.alpha / cfg.r
    t1 = count_trainable(_lora(build(), cfg, 1, ratio)[0])
    t2 = count_trainable(_lora(build(), cfg, 2, 2 * ratio)[0])
    per_rank, fixed = t2 - t1, t1 - (t2 - t1)
    if t1 > cfg.budget:
        hint = (
            "train_head: false, or fewer target_modules"
            if cfg.train_head and fixed > cfg.budget
            else "fewer target_modules"
        )
        raise TextuneError(
            f"model.peft.budget: {cfg.budget:,} trainable parameters is too small: even r=1 needs {t1:,} "
            f"({fixed:,} fixed in the head, {per_rank:,} per rank); raise the budget to at least {t1:,} or use {hint}"
        )
    return max(1, math.floor((cfg.budget - fixed) / per_rank)) if per_rank else cfg.r


def apply_peft(build: Callable[[], torch.nn.Module], cfg: PeftConfig) -> tuple[torch.nn.Module, PeftReport]:
    """Builds the model with ``build()`` and wraps it per ``cfg`` (no-op for method none).

    ``build`` is called again for budget probes, so it must return a fresh model each time (cheap on the meta
    device, see :func:`textune.models.build.build_from_config`).
    """
    model = build()
    if cfg.method == "none":
        return model, PeftReport(method="none")
    _check_targets(model, target_modules(model, cfg.target_modules))
    r, alpha = cfg.r, cfg.alpha
    if cfg.budget is not None:
        r = solve_rank(build, cfg)
        alpha = cfg.alpha / cfg.r * r
        model = build()
    # judged on the bare model: once wrapped, the head's modules are renamed (modules_to_save.default...)
    heads = head_modules(model) if cfg.train_head else []
    notes = _inside_head_notes(model, target_modules(model, cfg.target_modules), heads, r)
    wrapped, targets, heads = _lora(model, cfg, r, alpha)
    report = PeftReport(
        method="lora",
        r=r,
        alpha=alpha,
        target_modules=list(targets) if not isinstance(targets, str) else [targets],
        head_modules=heads,
        notes=notes,
    )
    if cfg.budget is not None:
        report.notes.insert(
            0,
            f"budget {cfg.budget:,}: chose r={r} (alpha={alpha:g}, alpha/r kept at {cfg.alpha / cfg.r:g}), "
            f"{count_trainable(wrapped):,} trainable parameters",
        )
    return wrapped, report


def parameter_table(model: torch.nn.Module) -> list[dict]:
    """Trainable and total parameters grouped as adapters / head / fusion / backbone."""
    wrapped = hasattr(model, "peft_config")
    bare = model.base_model.model if wrapped else model
    heads = head_modules(bare)  # judged on the bare model, as apply_peft does: a frozen head is still the head
    groups: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        if "original_module" in name:
            continue
        if "lora_" in name:
            group = "adapters (LoRA)"
        elif ".fusion." in f".{name}":
            group = "fusion"
        elif "modules_to_save" in name or _in_head(name.removeprefix("base_model.model." if wrapped else ""), heads):
            group = "head"
        else:
            group = "backbone"
        g = groups.setdefault(group, {"total": 0, "trainable": 0})
        g["total"] += p.numel()
        g["trainable"] += p.numel() if p.requires_grad else 0
    return [{"module": k, **v} for k, v in groups.items()]
