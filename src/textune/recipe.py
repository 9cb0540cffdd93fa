"""The typed recipe: YAML on disk, validated once, dotted overrides, saved with every run.

Each field carries a one-line description; ``textune init`` prints them as comments.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from textune.errors import TextuneError, did_you_mean

TASKS = ("classification", "regression", "ordinal", "preference", "multilabel")


def parse_duration(text: str | int | float) -> float:
    """Seconds in '2h45m', '90m', '30s', '1.5h' or a bare number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"time budget {text!r} is not a positive duration; write e.g. 2h45m, 90m or 600s")
        return float(text)
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
    if not parts or not any(parts.groups()):
        raise ValueError(f"'{text}' is not a duration; write e.g. 2h45m, 90m or 600s")
    h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
    seconds = h * 3600 + m * 60 + sec
    if seconds <= 0:
        raise ValueError(f"'{text}' is not a positive duration; write e.g. 2h45m, 90m or 600s")
    return seconds


# numpy (hence torch's and sklearn's seeding) takes seeds in [0, 2**32 - 1]
_MAX_SEED = 2**32 - 1


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    # allow_inf_nan=False: inf or nan in any float (YAML .inf/.nan, --set x=inf) is an error here, not a torch or
    # sklearn traceback halfway through a run.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    train: str | None = Field(None, description="Training file (CSV, TSV, JSONL or Parquet).")
    validation: str | None = Field(None, description="Validation file; if empty, a seeded stratified split of train.")
    test: str | None = Field(None, description="Optional test file, evaluated (if labelled) and predicted at the end.")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train held out when no validation file.")
    text: str = Field("text", description="Text column, or a template joining columns, e.g. '{title}. {body}'.")
    label: str = Field("label", description="Label column (the target for regression, unless data.target is set).")
    target: str | None = Field(None, description="Regression target column (default: data.label).")
    id: str | None = Field(None, description="Id column written to submissions (row number if absent).")
    labels: list[str] | None = Field(None, description="Label order; default: sorted label values from train.")
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per text; longer texts are truncated.")
    max_rows: int | None = Field(None, ge=1, description="Use a seeded random sample of N train rows (quick runs).")
    warn_unstratified: bool = Field(True, description="Warn when a class is too small to stratify the split.")
    text_pair: str | None = Field(
        None, description="Second text column or template, encoded as a true sentence pair with data.text."
    )
    truncation: Literal["head", "tail", "head_tail", "chunks"] = Field(
        "head",
        description="Long texts: keep the first, the last, or the first H and last T tokens; or split into windows.",
    )
    stride: int | None = Field(None, ge=0, description="chunks: tokens shared by consecutive windows (default 1/4).")
    max_chunks: int | None = Field(None, ge=1, description="chunks: at most N windows per text, spread evenly.")
    chunk_pooling: Literal["mean_proba", "mean_logits"] = Field(
        "mean_proba", description="chunks: one prediction per text: mean of its windows' probabilities or logits."
    )
    head_tokens: int | None = Field(
        None, ge=0, description="head_tail: tokens kept from the start (default a quarter)."
    )
    pair_truncation: Literal["longest_first", "only_first", "only_second", "share"] = Field(
        "longest_first", description="How a text pair is cut to max_length ('share': data.field_shares per field)."
    )
    field_shares: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="Token share per field for pair 'share' / preference [prompt, a, b]; unused share moves on."
    )
    label_columns: list[str] | None = Field(
        None, description="0/1 target columns: multilabel labels, or preference [winner_a, winner_b, tie]."
    )
    label_sep: str = Field(",", description="multilabel: separator of labels inside data.label, e.g. 'a,b'.")
    prompt: str = Field("prompt", description="preference: prompt column (plain text or a JSON list of strings).")
    response_a: str = Field("response_a", description="preference: first response column.")
    response_b: str = Field("response_b", description="preference: second response column.")


class RegressionConfig(_Section):
    transform: Literal["none", "log1p", "log"] = Field(
        "none", description="Target transform; its inverse is applied to predictions."
    )
    loss: Literal["mse", "huber", "mae", "smape", "focal_smape"] = Field("mse", description="Training loss.")
    loss_space: Literal["transformed", "original"] = Field(
        "transformed", description="Compute the loss on transformed targets or back in the original units."
    )
    huber_delta: float = Field(1.0, gt=0, description="Huber loss delta (in the loss space, standardised).")
    gamma: float = Field(1.0, ge=0, description="focal_smape: weight each row's SMAPE by itself to this power.")
    clip_min: float | None = Field(None, description="Clip predictions below this value (e.g. 0.01 for prices).")
    clip_max: float | None = Field(None, description="Clip predictions above this value.")

    @model_validator(mode="after")
    def _clip_order(self) -> RegressionConfig:
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            raise ValueError(f"clip_min: {self.clip_min} is above clip_max ({self.clip_max}); swap them or remove one")
        return self


class FusionHeadConfig(_Section):
    widths: list[Annotated[int, Field(ge=1)]] = Field(
        [256], description="Hidden layer widths of the MLP over [text, features]."
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each hidden layer.")
    layer_norm: bool = Field(True, description="LayerNorm after each hidden layer.")
    pooling: Literal["mean", "cls", "attention"] = Field(
        "mean", description="How the text encoder's tokens are pooled (model.pooling, when set, wins)."
    )


class EmbeddingFeature(_Section):
    model: str = Field("bundled:minilm", description="Frozen encoder: 'bundled:minilm', a directory or a run.")
    text: str | None = Field(None, description="Column or template to embed; default: data.text.")
    pooling: Literal["mean", "cls"] = Field("mean", description="Mean over tokens (masked) or the first token.")
    normalize: bool = Field(True, description="Scale each embedding to unit length.")
    prefix: str | None = Field(None, description="'query' or 'passage' (E5 markers) or any text put before each.")
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per text for the embedding model.")


class FeaturesConfig(_Section):
    numeric: list[str] = Field([], description="Numeric columns (standardised on train; missing -> indicator).")
    categorical: list[str] = Field([], description="Categorical columns (learned embeddings; unseen -> a bucket).")
    text_fields: list[str] = Field(
        [], description="'Key: value' lines of the text used as categorical features, e.g. [Manufacturer]."
    )
    text_stats: bool = Field(False, description="Length, words, digits, capitals, word length, richness, sentences.")
    quantities: bool = Field(False, description="Numbers with units and pack counts parsed from the text.")
    embeddings: list[EmbeddingFeature] = Field(
        [], description="Frozen sentence embeddings as features: {model: ..., text: ...} or a list of them."
    )
    head: FusionHeadConfig = Field(default_factory=FusionHeadConfig, description="The fusion MLP head.")

    @field_validator("embeddings", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @property
    def enabled(self) -> bool:
        return bool(
            self.numeric
            or self.categorical
            or self.text_fields
            or self.text_stats
            or self.quantities
            or self.embeddings
        )


class OrdinalConfig(_Section):
    head: Literal["coral", "classification"] = Field(
        "coral", description="'coral' (K-1 cumulative 'above level k' logits, BCE) or plain softmax classification."
    )


class PreferenceConfig(_Section):
    swap_augment: bool = Field(True, description="Also train on every pair with a/b swapped (and labels swapped).")
    symmetric_eval: bool = Field(True, description="Predict both orders and average with labels swapped back.")
    calibrate: bool = Field(True, description="Fit a temperature on validation (saved with the model).")


class MultilabelConfig(_Section):
    tune_thresholds: bool = Field(True, description="Tune one threshold per label on validation F1 (saved).")
    threshold: float = Field(0.5, gt=0, lt=1, description="Threshold for every label when not tuned.")


class PeftConfig(_Section):
    method: Literal["none", "lora"] = Field("none", description="'none' (full fine-tuning) or 'lora' (PEFT adapters).")
    r: int = Field(8, ge=1, description="LoRA rank (ignored when budget is set: the largest fitting rank is used).")
    alpha: float = Field(16, gt=0, description="LoRA alpha; with a budget, alpha/r is kept as configured here.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA branch.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    target_modules: str | list[str] = Field(
        "attention", description="'attention' (query, value), 'all-linear', or module names like [query, value]."
    )
    train_head: bool = Field(True, description="Keep the task head fully trainable (PEFT modules_to_save).")
    budget: int | None = Field(None, ge=1, description="Trainable-parameter budget: pick the largest rank that fits.")


class ModelConfig(_Section):
    name: str = Field(
        "bundled:minilm",
        description="'bundled:minilm', a local Hugging Face model directory, or a hub id (needs the local cache).",
    )
    allow_network: bool = Field(False, description="Let a hub id be downloaded when it is not in the local cache.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Override the model's hidden/attention dropout.")
    trust_remote_code: bool = Field(False, description="Run code shipped with a hub model (off: it is code execution).")
    peft: PeftConfig = Field(default_factory=PeftConfig, description="Parameter-efficient fine-tuning (LoRA).")
    pooling: Literal["auto", "cls", "mean", "attention"] = Field(
        "auto",
        description="Head input: 'auto' keeps the architecture's own head; 'cls', 'mean' (masked) or 'attention' "
        "(learned weights over tokens) put textune's linear head on that pooled vector.",
    )
    multi_sample_dropout: int = Field(
        1,
        ge=1,
        le=16,
        description="Train the head on N dropout masks of the pooled vector at once, logits averaged (N > 1 uses "
        "textune's head; prediction is one pass without dropout).",
    )
    reinit_layers: int = Field(
        0, ge=0, description="Re-initialise the top N encoder layers before training (helps small datasets)."
    )

    @model_validator(mode="after")
    def _reinit_trains_its_layers(self) -> ModelConfig:
        if self.reinit_layers and self.peft.method != "none":
            # adapters would train against frozen random layers that merging (from the pretrained base) never sees
            raise ValueError(
                f"reinit_layers: {self.reinit_layers} re-drawn layers would stay frozen under peft.method "
                f"{self.peft.method}; set reinit_layers to 0 or peft.method to none"
            )
        return self


class EarlyStopping(_Section):
    metric: str | None = Field(None, description="Validation metric to watch; default: the task's main metric.")
    mode: Literal["max", "min"] | None = Field(None, description="'max' or 'min'; default: the metric's direction.")
    patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement.")


class TrainConfig(_Section):
    epochs: float = Field(3, gt=0, description="Passes over train (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run; overrides epochs.")
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        32,
        description="Micro-batch size per process, or 'auto': the largest that fits in memory, with gradient "
        "accumulation up to train.effective_batch_size rows per step.",
    )
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    effective_batch_size: int | None = Field(
        None, ge=1, description="With batch_size: auto, rows per optimizer step per process (default 32)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Token budget per micro-batch (rows x longest row), as fairseq's --max-tokens: short texts "
        "make bigger batches. Replaces batch_size.",
    )
    eval_batch_size: int = Field(128, ge=1, description="Batch size for evaluation and prediction.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW).")
    layer_lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: the head trains at lr, encoder layer k of L at lr x decay^(L-k), "
        "the embeddings at lr x decay^(L+1). 1: off.",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps spent warming up the learning rate.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null turns it off.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    class_weights: Literal["none", "balanced"] | list[float] = Field(
        "none", description="'none', 'balanced' (inverse frequency) or one weight per label."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="'auto' picks bf16 where the CPU/GPU runs it natively, fp16 on older GPUs, else fp32.",
    )
    seed: int = Field(42, ge=0, le=_MAX_SEED, description="Seed for splits, initialisation, batch order and dropout.")
    group_by_length: bool = Field(True, description="Batch texts of similar length together (less padding).")
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N optimizer steps; default once an epoch.")
    checkpoint_every: int | None = Field(
        None, ge=1, description="Write a resumable checkpoint every N steps; default at every evaluation."
    )
    log_every: int = Field(10, ge=1, description="Log train loss every N optimizer steps.")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping, description="Early stopping.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")
    progress: bool = Field(True, description="Show a progress bar.")
    time_budget: str | None = Field(
        None, description="Stop cleanly before this much training time (e.g. '2h45m'); resumable with --resume."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory.")
    compile: bool = Field(False, description="torch.compile the model (pays a compile time up front).")
    keep_checkpoint: bool = Field(
        True,
        description="Keep checkpoints/last (optimizer state, about twice the model) after a run finishes; false "
        "deletes it once the run is complete; a run stopped early (Ctrl-C, time budget) always keeps it.",
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        [], description="Experiment trackers fed the metrics, recipe and outputs: tensorboard, mlflow, wandb (offline)."
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        ok = v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
        if not ok and not (isinstance(v, str) and v.strip().isdigit() and int(v) >= 1):
            raise ValueError("should be a positive integer or 'auto'")
        return v

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> Any:
        # one tracker may be written as a plain string; null means none, as the default
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        return list(dict.fromkeys(v)) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v

    @field_validator("class_weights", mode="before")
    @classmethod
    def _class_weights(cls, v: Any) -> Any:
        # checked here, not by the type: pydantic would report a bad list against the 'none'/'balanced' branch
        if isinstance(v, list) and (not v or not all(_positive_finite(w) for w in v)):
            raise ValueError("give one finite weight above 0 per label, e.g. [1, 2.5], or 'none' or 'balanced'")
        return v

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @model_validator(mode="after")
    def _batching(self) -> TrainConfig:
        auto = self.batch_size == "auto"
        if auto and "grad_accum" in self.model_fields_set and self.grad_accum != 1:
            raise ValueError(
                "grad_accum: set by batch_size: auto; give the rows per step as effective_batch_size instead"
            )
        if self.effective_batch_size is not None and not auto:
            raise ValueError("effective_batch_size: only used with batch_size: auto; remove it or set batch_size: auto")
        if auto and self.max_tokens is not None:
            raise ValueError("max_tokens: cannot be combined with batch_size: auto; remove one of the two")
        return self


class CVConfig(_Section):
    folds: int | None = Field(
        None,
        ge=0,
        description="Cross-validation: K fold runs, each validated on the rows it did not train on (>= 2; "
        "null or 0: off).",
    )
    seed: int | None = Field(None, ge=0, le=_MAX_SEED, description="Seed of the fold assignment; default train.seed.")
    group: str | None = Field(None, description="Column whose rows never straddle folds (e.g. an author or item id).")

    @field_validator("folds")
    @classmethod
    def _at_least_two(cls, v: int | None) -> int | None:
        if v == 1:
            raise ValueError("one fold would train on nothing; give 2 or more, or 0/null to turn cross-validation off")
        return v or None  # 0 means off, as null does

    @property
    def enabled(self) -> bool:
        return bool(self.folds)


class OutputConfig(_Section):
    dir: str = Field("runs", description="Parent directory of runs; if set relative, from the recipe's folder.")
    name: str | None = Field(None, description="Run directory name; default: recipe name + timestamp.")


_SPEC_KINDS = ("float", "int", "categorical")


def _tunable_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted leaf key of the recipe (``train.lr``, ``model.peft.r``), for search-space validation."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        # Optional sections (``X | None``) are walked like plain ones.
        section = next(
            (a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
        keys += _tunable_keys(section, f"{prefix}{name}.") if section else [f"{prefix}{name}"]
    return keys


# YAML 1.1 (PyYAML) reads 1e-5 as a string; learning rates are written that way, so such strings become floats.
_SCI = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _number(v: Any) -> Any:
    return float(v) if isinstance(v, str) and _SCI.match(v.strip()) else v


def _positive_finite(v: Any) -> bool:
    """Whether ``v`` reads as a finite number above 0 (numeric strings such as YAML 1.1's '1e-1' count)."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return False
    try:
        f = float(v)
    except ValueError:
        return False
    return math.isfinite(f) and f > 0


def _non_finite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def _check_spec(key: str, spec: Any) -> dict[str, Any]:
    """Validates one search-space entry and returns it with scientific-notation strings read as numbers."""
    where = f"'{key}'"
    example = "e.g. {float: [1e-5, 1e-3], log: true}, {int: [1, 16]} or {categorical: [16, 32]}"
    if not isinstance(spec, dict) or sum(k in spec for k in _SPEC_KINDS) != 1:
        raise ValueError(f"{where}: give exactly one of float, int, categorical, {example}")
    kind = next(k for k in _SPEC_KINDS if k in spec)
    spec = {k: [_number(x) for x in v] if isinstance(v, list) else _number(v) for k, v in spec.items()}
    allowed = {"categorical": {"categorical"}, "float": {"float", "log", "step"}, "int": {"int", "log", "step"}}[kind]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ValueError(f"{where}: unknown option '{extra[0]}'{did_you_mean(extra[0], allowed)} for a {kind} range")
    values = spec[kind]
    # optuna takes inf/nan bounds and then samples garbage, or fails deep inside a trial
    if any(_non_finite(v) for v in (values if isinstance(values, list) else [values]) + [spec.get("step")]):
        raise ValueError(f"{where}: every bound, step and value must be a finite number (got {spec!r})")
    if kind == "categorical":
        if not isinstance(values, list) or not values or any(isinstance(v, (dict, list)) for v in values):
            raise ValueError(f"{where}: categorical takes a non-empty list of plain values, e.g. [16, 32]")
        return spec
    number = int if kind == "int" else (int, float)
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(isinstance(v, number) and not isinstance(v, bool) for v in values)
        or values[0] > values[1]
    ):
        raise ValueError(f"{where}: {kind} takes [low, high] with low <= high, e.g. {{{kind}: [1, 16]}}")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if log and values[0] <= 0:
        raise ValueError(f"{where}: a log range needs low > 0")
    if log and step is not None:
        raise ValueError(f"{where}: use either log or step, not both")
    if step is not None and (not isinstance(step, number) or isinstance(step, bool) or step <= 0):
        raise ValueError(f"{where}: step must be a positive {'integer' if kind == 'int' else 'number'}")
    return spec


class TuneConfig(_Section):
    metric: str | None = Field(None, description="Validation metric to optimise; default: the task's main metric.")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="'maximize' or 'minimize'; default: the metric's direction."
    )
    trials: int = Field(20, ge=1, description="Trials in the study, counted over all sessions and workers.")
    timeout: str | float | None = Field(None, description="Time budget of one session, e.g. '2h', '30m', 900 (s).")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="'tpe', 'random' or 'grid'.")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="Stops unpromising trials early.")
    prune_after: int = Field(3, ge=0, description="Finished trials before the median pruner starts pruning.")
    seed: int | None = Field(
        None, ge=0, le=_MAX_SEED, description="Sampler seed (leave empty when several workers share a study)."
    )
    retrain: Literal["train+validation", "train"] = Field(
        "train+validation", description="What --retrain-best trains the best recipe on."
    )
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Dotted key -> {float: [lo, hi], log: true}, {int: [lo, hi], step: 1} or {categorical: [...]}.",
    )

    @field_validator("timeout")
    @classmethod
    def _duration(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        known = _tunable_keys(Recipe)
        out = {}
        for key, spec in v.items():
            if key not in known or key.startswith(("tune.", "output.")):
                valid = [k for k in known if not k.startswith(("tune.", "output."))]
                raise ValueError(f"unknown recipe key '{key}'{did_you_mean(key, valid)}; tune a key like train.lr")
            out[key] = _check_spec(key, spec)
        return out


class Recipe(_Section):
    task: str = Field("classification", description="Task kind: " + ", ".join(TASKS) + ".")
    data: DataConfig = Field(default_factory=DataConfig, description="Where the data is and which columns to use.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Which pretrained encoder to fine-tune.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation settings.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where runs go.")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Hyperparameter search ('textune tune').")
    regression: RegressionConfig = Field(default_factory=RegressionConfig, description="Regression targets and loss.")
    features: FeaturesConfig = Field(default_factory=FeaturesConfig, description="Tabular features fused with text.")
    ordinal: OrdinalConfig = Field(default_factory=OrdinalConfig, description="Ordinal levels (task: ordinal).")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description="Pairwise preference.")
    multilabel: MultilabelConfig = Field(default_factory=MultilabelConfig, description="Multi-label thresholds.")
    cv: CVConfig = Field(default_factory=CVConfig, description="Cross-validation (textune train --folds K).")
    # The recipe file's stem, used to name run directories; not part of the saved recipe.
    _stem: str = PrivateAttr("run")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"unknown task '{v}'{did_you_mean(v, TASKS)}; choose one of {', '.join(TASKS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        """Checks across sections."""
        labels = self.data.labels
        if labels is not None and len(set(labels)) != len(labels):
            raise ValueError("data.labels: lists a label twice; give each label once")
        if self.train.max_tokens is not None and self.train.max_tokens < self.data.max_length:
            raise ValueError(
                f"train.max_tokens: {self.train.max_tokens} is below data.max_length ({self.data.max_length}), so "
                "the longest texts would not fit; raise train.max_tokens"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _fields_of(model: type[BaseModel], path: list[str]) -> list[str]:
    """Valid key names at ``path`` (a list of section names) for the "did you mean" hint."""
    for part in path:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _section_of(ann: Any) -> type[BaseModel] | None:
    """The section class inside a field's annotation (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return next((s for s in map(_section_of, get_args(ann)) if s is not None), None)


def _error_key(loc: tuple[int | str, ...]) -> list[str]:
    """The recipe key of a pydantic error location. Past a leaf field the location goes on with the member of
    a union that failed ('float', 'constrained-int', "literal['auto']") or a list index: not keys. A dict's
    keys (tune.space entries) are kept."""
    model: type[BaseModel] | None = Recipe
    leaf: Any = None
    keys: list[str] = []
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            if get_origin(leaf) is dict:
                keys.append(str(part))
            continue
        keys.append(str(part))
        field = model.model_fields.get(str(part))
        leaf = field.annotation if field else None
        model = _section_of(leaf)
    return keys


def _format_error(err: ValidationError, source: str) -> str:
    errors = err.errors()
    # A union field (str | float, 'none' | list) fails once per member; "should be a finite number" is the one
    # that explains an inf or nan, not "should be a valid string".
    e = next((x for x in errors if x["type"] == "finite_number"), errors[0])
    loc = _error_key(e["loc"])
    key = ".".join(loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        valid = _fields_of(Recipe, loc[:-1])
        hint = did_you_mean(loc[-1], valid) or f" (valid keys: {', '.join(valid)})"
        return f"{source}: unknown key '{key}'{hint}"
    msg = e["msg"].removeprefix("Value error, ")
    # a section's own check names its key first ("grad_accum: ..."): make it part of the key
    head, sep, rest = msg.partition(": ")
    *section, name = head.split(".")
    if sep and name in _fields_of(Recipe, loc + section):
        key, msg = ".".join([*loc, head]), rest
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: key '{key}': {msg}{got_s}"


def _string_field(keys: list[str]) -> tuple[bool, bool]:
    """Whether the recipe field at dotted ``keys`` holds only strings (``str``, ``Literal['a', 'b']``), and
    whether it may also be null; (False, False) for other types and for keys that are not fields."""
    model: type[BaseModel] = Recipe
    for i, key in enumerate(keys):
        field = model.model_fields.get(key)
        if field is None:
            return False, False
        ann = field.annotation
        if i < len(keys) - 1:
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                return False, False
            model = ann
    members = get_args(ann) if get_origin(ann) in (Union, types.UnionType) else (ann,)
    strings = [m for m in members if m is not type(None)]
    is_str = all(
        m is str or (get_origin(m) is Literal and all(isinstance(a, str) for a in get_args(m))) for m in strings
    )
    return bool(strings) and is_str, len(strings) < len(members)


def _string_value(raw: str, optional: bool) -> str | None:
    """The value of a string key: verbatim, so that a template like ``{title}. {body}`` is not read as a YAML
    mapping; a YAML-quoted string is unquoted (``tune`` passes values JSON-encoded) and null clears an optional
    key."""
    text = raw.strip()
    if optional and text.lower() in ("", "null", "~"):
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = None
        if isinstance(value, str):
            return value
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parses ``a.b.c=value``. The value of a string key (data.text, model.name, ...) is kept as written; any
    other value is read as YAML, so ``3e-5``, ``true`` and ``[a, b]`` get their types."""
    if "=" not in item:
        raise TextuneError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-5")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    is_str, optional = _string_field(keys)
    if is_str:
        return keys, _string_value(raw, optional)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "3e-5" as a string; numbers in scientific notation are what people type for lr.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return keys, value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        keys, value = parse_override(item)
        node = raw
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                raise TextuneError(f"--set {item}: '{'.'.join(keys[: i + 1])}' is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def _resolve_paths(recipe: Recipe, base: Path) -> None:
    """Makes data paths absolute: relative paths are read against the recipe file's folder, then the cwd.
    A relative output.dir that the recipe sets is put beside the recipe file, so its runs land in one place
    whatever the cwd; left unset, runs go to ./runs of the working directory (as the Trainer's output_dir)."""
    if "dir" in recipe.output.model_fields_set and not Path(recipe.output.dir).is_absolute():
        recipe.output.dir = str((base / recipe.output.dir).resolve())
    for key in ("train", "validation", "test"):
        value = getattr(recipe.data, key)
        if value is None or Path(value).is_absolute():
            continue
        beside = (base / value).resolve()
        setattr(
            recipe.data,
            key,
            str(beside if beside.exists() or not Path(value).exists() else Path(value).resolve()),
        )
    name = recipe.model.name
    if not name.startswith("bundled:") and not Path(name).is_absolute():
        beside = base / name
        if beside.is_dir():
            recipe.model.name = str(beside.resolve())
        elif Path(name).is_dir():
            recipe.model.name = str(Path(name).resolve())


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(f"key '{key}' appears twice")
        self.key, self.first, self.second = key, first, second


class _RecipeLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping: PyYAML would silently keep the second, so a
    second ``train:`` section would quietly replace the first."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # dotted key of each mapping node, recorded by its parent, so that an error names 'train.lr', not 'lr'
        self._paths: dict[int, str] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        prefix = self._paths.get(id(node), "")
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            # merge keys ('<<: *base') may legitimately repeat what they merge; non-scalar keys are not recipe keys
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            name = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            # the tag tells 'true' (a bool) from "true" (a string), which are different keys
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                raise _DuplicateKey(name, seen[ident], line)
            seen[ident] = line
            if isinstance(value_node, yaml.MappingNode):
                self._paths.setdefault(id(value_node), f"{name}.")
        return super().construct_mapping(node, deep=deep)


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> str:
    where = getattr(exc, "problem_mark", None)
    if where is None:
        return f"{path}: not valid YAML; fix the syntax"
    lines = text.split("\n")
    line = lines[where.line] if where.line < len(lines) else ""
    # PyYAML says "found character '\t' that cannot start any token": name the usual cause
    if "\\t" in str(getattr(exc, "problem", "")) or "\t" in line[: len(line) - len(line.lstrip())]:
        return f"{path}: not valid YAML: line {where.line + 1} holds a tab; indent YAML with spaces"
    return f"{path}: not valid YAML at line {where.line + 1}; fix the syntax"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TextuneError(f"{path}: recipe file not found; create one with 'textune init classification > {path}'")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise TextuneError(f"{path}: not valid YAML; fix the syntax") from None
    try:
        raw = yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass: plain data only
    except _DuplicateKey as exc:
        where = f"lines {exc.first} and {exc.second}" if exc.first != exc.second else f"both on line {exc.first}"
        raise TextuneError(f"{path}: key '{exc.key}' is given twice ({where}); keep one of them") from None
    except yaml.YAMLError as exc:
        raise TextuneError(_yaml_error(path, text, exc)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TextuneError(f"{path}: a recipe is a mapping of sections (task, data, model, train)")
    return raw


def recipe_from_dict(raw: dict, source: str = "recipe", base: Path | None = None) -> Recipe:
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise TextuneError(_format_error(err, source)) from None
    if base is not None:
        _resolve_paths(recipe, base)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Loads and validates a recipe.

    Args:
        path: YAML file.
        overrides: dotted ``KEY=VALUE`` strings, e.g. ``["train.lr=3e-5"]``.

    Returns:
        The validated :class:`Recipe`, with data paths made absolute.

    Raises:
        TextuneError: unknown keys (with a "did you mean"), wrong types, unreadable YAML.
    """
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides)
    recipe = recipe_from_dict(raw, source=str(path), base=path.resolve().parent)
    recipe._stem = path.stem
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True)


def _annotated(
    model: BaseModel,
    indent: int = 0,
    prefix: str = "",
    hide: frozenset[str] = frozenset(),
    notes: dict[str, str] | None = None,
) -> list[str]:
    """YAML lines of ``model`` with each field's description as a comment; ``hide`` drops dotted keys (and whole
    sections), ``notes`` replaces a key's comment."""
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        key = f"{prefix}{name}"
        if key in hide:
            continue
        value = getattr(model, name)
        doc = (notes or {}).get(key, field.description or "")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:  # {doc}")
            lines.extend(_annotated(value, indent + 1, f"{key}.", hide, notes))
        else:
            dumped = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"{pad}{name}: {dumped}  # {doc}")
    return lines


# What `textune init TASK` prints. The metric names are the tasks' main_metric (a test keeps them in step:
# importing the tasks here would load torch). Each starter shows the data keys its task reads and its own section,
# not the sections of the other task kinds.
_TEXT_KEYS = ("text", "text_pair", "truncation", "stride", "max_chunks", "chunk_pooling", "head_tokens")
_TEXT_KEYS += ("pair_truncation", "field_shares")
_PREFERENCE_KEYS = ("prompt", "response_a", "response_b", "truncation", "head_tokens", "field_shares")
_TARGET_KEYS = ("label", "target", "labels", "label_columns", "label_sep")
_TASK_SECTIONS = ("regression", "ordinal", "preference", "multilabel")


@dataclasses.dataclass(frozen=True)
class _Starter:
    predicts: str
    metric: str
    reads: tuple[str, ...]  # data keys beyond the splits, id and max_length
    features: bool = True  # whether the fusion of tabular features is offered
    values: dict[str, Any] = dataclasses.field(default_factory=dict)  # example values, by dotted key
    # comments that fit the task better than the field's description, by dotted key
    notes: dict[str, str] = dataclasses.field(default_factory=dict)


_STARTERS = {
    "classification": _Starter(
        predicts="one label per text", metric="accuracy", reads=(*_TEXT_KEYS, "label", "labels")
    ),
    "regression": _Starter(
        predicts="a number per text (e.g. a price)",
        metric="smape",
        reads=(*_TEXT_KEYS, "target"),
        values={"data.target": "target"},
        notes={"data.target": "Numeric target column."},
    ),
    "ordinal": _Starter(
        predicts="an ordered level per text (e.g. A1 < A2 < B1)",
        metric="qwk",
        reads=(*_TEXT_KEYS, "label", "labels"),
        values={"data.labels": ["low", "medium", "high"]},
        notes={
            "data.label": "Level column (its values are the levels listed in data.labels).",
            "data.labels": "Your levels, lowest to highest: the order the model learns (replace the example).",
        },
    ),
    "preference": _Starter(
        predicts="which of two responses to a prompt wins (a, b or tie)",
        metric="log_loss",
        reads=(*_PREFERENCE_KEYS, "label", "label_columns"),
        features=False,
        values={"data.label_columns": ["winner_model_a", "winner_model_b", "winner_tie"]},
        notes={
            "data.truncation": "'head', 'tail' or 'head_tail': which tokens of each field are kept.",
            "data.field_shares": "Token share of [prompt, response_a, response_b]; default [0.2, 0.4, 0.4].",
            "data.label": "Outcome column holding a, b or tie (read when data.label_columns is removed).",
            "data.label_columns": "0/1 columns [a wins, b wins, tie]; remove it to read a, b or tie from data.label.",
        },
    ),
    "multilabel": _Starter(
        predicts="any number of labels per text",
        metric="f1_micro",
        reads=(*_TEXT_KEYS, "label", "label_sep", "label_columns", "labels"),
        notes={
            "data.label": "Column holding each row's labels joined by data.label_sep, e.g. 'sports,politics'.",
            "data.label_columns": "Or one 0/1 column per label, e.g. [sports, politics] (then data.label is unused).",
        },
    ),
}


def init_template(task: str) -> str:
    """An annotated starter recipe for ``task`` (``textune init``): the keys that task reads, with examples."""
    if task not in TASKS:
        raise TextuneError(f"unknown task '{task}'{did_you_mean(task, TASKS)}; choose one of {', '.join(TASKS)}")
    starter = _STARTERS[task]
    recipe = Recipe(task=task)
    recipe.data.train = "train.csv"
    for key, value in starter.values.items():
        section, name = key.split(".")
        setattr(getattr(recipe, section), name, value)
    optional = {*_TEXT_KEYS, *_PREFERENCE_KEYS, *_TARGET_KEYS} - set(starter.reads)
    hide = {f"data.{k}" for k in optional} | (set(_TASK_SECTIONS) - {task})
    if not starter.features:
        hide.add("features")
    header = [
        f"# textune {task}: predicts {starter.predicts}; main metric: {starter.metric}.",
        "# Paths (data.*, output.dir) are relative to this file. Every key is optional but data.train.",
        "# Validate with: textune check recipe.yaml    Train with: textune train recipe.yaml",
    ]
    return "\n".join(header + _annotated(recipe, hide=frozenset(hide), notes=starter.notes)) + "\n"
