"""The Task interface: targets, head size, loss, metrics and prediction format of one task kind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from textune._math import logit, sigmoid, softmax
from textune.data.io import render_texts, template_columns
from textune.errors import TextuneError, did_you_mean
from textune.recipe import Recipe

# Folds of the validation rows for cross-fitted calibration (temperature, thresholds): each row's calibrated
# output comes from a calibration fitted on the other folds, so the reported figure is out of sample.
CALIBRATION_FOLDS = 5


class Task(ABC):
    """A task kind. Fitted on train (label maps and similar state), saved as JSON with the run."""

    name: str
    main_metric: str
    # Every metric the task reports, with its direction: the one source that early stopping, tune, compare and
    # the report read ("loss", the task's own loss on validation, is added by the loop and always minimised).
    metric_directions: dict[str, str] = {}
    # validation metrics drawn in plots/metrics.png (same scale, so they share one axis)
    curve_metrics: tuple[str, ...] = ()
    # the metric a post-hoc calibration (temperature, thresholds) improves; reported before and after
    calibration_metric: str | None = None
    # labels the head needs at least, when its size is the number of labels the data holds (None: fixed size)
    min_labels: int | None = None

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        for key, metric in (
            ("train.early_stopping.metric", recipe.train.early_stopping.metric),
            ("tune.metric", recipe.tune.metric),
        ):
            if metric is not None:
                self.direction(metric, key)

    # -- metrics ---------------------------------------------------------------------------------------------
    @classmethod
    def metric_names(cls) -> list[str]:
        return [*cls.metric_directions, "loss"]

    @classmethod
    def direction(cls, metric: str, key: str = "metric") -> str:
        """``'max'`` or ``'min'`` for a metric this task reports.

        Raises:
            TextuneError: the task reports no such metric (the message names ``key`` and the choices).
        """
        if metric == "loss":
            return "min"
        if metric not in cls.metric_directions:
            names = cls.metric_names()
            raise TextuneError(
                f"{key}: task {cls.name} reports no metric '{metric}'{did_you_mean(metric, names)}; choose one of "
                f"{', '.join(names)}"
            )
        return cls.metric_directions[metric]

    @abstractmethod
    def fit(self, train: pd.DataFrame, path: str | Path) -> None:
        """Learns what the task needs from train only (e.g. the label set)."""

    @abstractmethod
    def targets(self, df: pd.DataFrame, path: str | Path, split: str) -> np.ndarray:
        """Encodes the target column of ``df``; raises TextuneError naming the rows that are unusable."""

    def has_targets(self, df: pd.DataFrame) -> bool:
        return self.recipe.data.label in df.columns

    @property
    @abstractmethod
    def num_outputs(self) -> int: ...

    def model_kwargs(self) -> dict[str, Any]:
        """Extra arguments for ``from_pretrained`` (num_labels, id2label, ...)."""
        return {"num_labels": self.num_outputs}

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]: ...

    @abstractmethod
    def predictions(self, logits: np.ndarray, proba: bool = False) -> pd.DataFrame:
        """Submission columns (without the id) for the given raw outputs, one row per input."""

    def fit_statistics(self, train: pd.DataFrame, path: str | Path) -> None:  # noqa: B027 (optional hook)
        """Learns statistics (class weights, target mean and spread) from the training rows alone, after the
        validation split; :meth:`fit` saw the whole file only to fix the label set and check every row."""

    def stratify_on(self, df: pd.DataFrame) -> pd.Series | None:
        """The column to stratify the validation split on, if any."""
        return None

    @property
    def compared_fields(self) -> list[tuple[int, int]]:
        """Pairs of :meth:`fields` (by position) whose difference is informative, e.g. response a against b:
        hand features (lengths, words...) of the first minus the second feed the gradient-boosted baseline."""
        return []

    @property
    def single_text(self) -> bool:
        """Whether the model reads one text per row (not a pair or preference fields): what `check` measures."""
        return not self.recipe.data.text_pair

    @property
    def class_names(self) -> list[str] | None:
        """The classes counted per split by `check` (None: targets are not classes)."""
        return None

    def baseline_outputs(self) -> str:
        """What a linear baseline predicts for this task: 'classes' (log-probabilities), 'cumulative' (ordinal
        'above level k' logits), 'per_label' (multi-label logits) or 'values' (regression; see :meth:`to_outputs`)."""
        return "classes"

    def to_outputs(self, targets: np.ndarray) -> np.ndarray:
        """Targets mapped into the model's raw output space (what a regression baseline is fitted on)."""
        return targets

    def plots(self, out_dir: Path, logits: np.ndarray, targets: np.ndarray) -> list[Path]:
        """Task-specific plots of final validation outputs; the loss and metric curves are drawn elsewhere."""
        return []

    def state(self) -> dict[str, Any]:
        return {"task": self.name}

    def load_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        pass

    # -- inputs: defaults serve every one-text task (and text pairs); preference overrides them ---------------
    def input_columns(self) -> dict[str, str]:
        """Columns the model reads, each mapped to the recipe key that names it (for error messages)."""
        d = self.recipe.data
        cols = {c: "data.text" for c in template_columns(d.text)}
        if d.text_pair:
            cols.update({c: "data.text_pair" for c in template_columns(d.text_pair)})
        return cols

    def target_columns(self, df: pd.DataFrame | None = None) -> dict[str, str]:
        """Columns holding the targets, each mapped to its recipe key."""
        return {self.recipe.data.label: "data.label"}

    def texts(self, df: pd.DataFrame, path: str | Path) -> list[str]:
        """One flat string per row: what `check` measures and the TF-IDF baseline reads."""
        fields = self.fields(df, path)
        return fields[0] if len(fields) == 1 else ["\n\n".join(parts) for parts in zip(*fields, strict=True)]

    def fields(self, df: pd.DataFrame, path: str | Path) -> list[list[str]]:
        """The text fields of each row that the model sees as segments (one, or two for a pair)."""
        d = self.recipe.data
        out = [render_texts(df, d.text, path)]
        if d.text_pair:
            out.append(render_texts(df, d.text_pair, path, key="data.text_pair"))
        return out

    def encoding_policy(self) -> dict[str, Any] | None:
        """How fields are cut to max_length; None keeps the plain one-text path (and its token cache)."""
        d = self.recipe.data
        if not d.text_pair and d.truncation == "head":
            return None
        if d.text_pair and d.field_shares is not None and (len(d.field_shares) != 2 or min(d.field_shares) <= 0):
            raise TextuneError(f"data.field_shares: a text pair takes 2 positive shares, got {d.field_shares}")
        if d.truncation == "chunks":
            if d.text_pair:
                raise TextuneError("data.truncation: 'chunks' splits one text; it does not combine with data.text_pair")
            if self.recipe.features.enabled:
                # tabular features are indexed by input row, windows are not: the two would be misaligned
                raise TextuneError("data.truncation: 'chunks' does not combine with features yet; use head_tail")
            return {"side": "chunks", "stride": d.stride, "max_chunks": d.max_chunks}
        return {"side": d.truncation, "head": d.head_tokens, "pair": d.pair_truncation, "shares": d.field_shares}

    def encode(
        self,
        tokenizer,
        inputs: pd.DataFrame | list[str],
        path: str | Path = "input",
        train: bool = False,
        use_cache: bool = True,
    ):
        """Token ids of every input row (a DataFrame, or already-rendered texts of a one-text task).

        Args:
            tokenizer: the model's tokenizer.
            inputs: rows with the input columns, or a list of texts.
            path: file named in error messages.
            train: whether these rows are trained on (a task may add augmented rows).
            use_cache: read and write the disk token cache (prediction passes False: its inputs are seen once).
        """
        from textune.data.tokenize import encode_fields, tokenize

        policy = self.encoding_policy()
        if isinstance(inputs, pd.DataFrame):
            fields = self.fields(inputs, path)
        else:
            if self.recipe.data.text_pair:
                raise TextuneError(
                    f"{path}: this run reads text pairs (data.text_pair); pass a DataFrame with the columns "
                    f"{', '.join(self.input_columns())}"
                )
            fields = [[str(t) for t in inputs]]
        if policy is None:
            return tokenize(tokenizer, fields[0], self.recipe.data.max_length, use_cache)[0]
        return encode_fields(tokenizer, fields, self.recipe.data.max_length, policy, use_cache)[0]

    def encode_split(self, tokenizer, split) -> None:
        """Sets ``split.encoded``; for train, targets follow the encoded rows when a task adds rows."""
        split.encoded = self.encode(tokenizer, split.df, split.path, train=split.name == "train")
        if split.name == "train" and split.targets is not None and split.encoded.doc is not None:
            split.targets = self.row_targets(split.targets, split.encoded)

    def row_targets(self, targets: np.ndarray, encoded) -> np.ndarray:
        """Targets of encoded rows that are copies or windows of input rows (``encoded.doc``)."""
        return targets if encoded.doc is None else targets[encoded.doc]

    # How outputs become probabilities: 'softmax', 'sigmoid', or None (raw values, e.g. regression).
    output_activation: str | None = None

    def combine_outputs(self, outputs: np.ndarray, encoded) -> np.ndarray:
        """One output row per input row from the model's outputs on ``encoded``: windows of one text
        (``data.truncation: chunks``) are pooled; otherwise rows are returned unchanged."""
        if encoded is None or encoded.doc is None or encoded.variant is not None:
            return outputs
        return pool_windows(outputs, encoded.doc, self.recipe.data.chunk_pooling, self.output_activation)

    def fit_calibration(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Fits post-hoc state on validation outputs (temperature, thresholds); saved in ``state()``.

        Returns:
            Numbers worth reporting about the fit (empty when the task has nothing to fit).
        """
        return {}

    # Calibration hooks: the fitted state, and raw outputs mapped so that the identity calibration gives the same
    # decisions and probabilities as the fitted one (tasks without calibration keep the defaults).
    def calibration_state(self) -> Any:
        return None

    def set_calibration_state(self, state: Any) -> None:  # noqa: B027 (optional hook)
        pass

    def apply_calibration(self, outputs: np.ndarray) -> np.ndarray:
        return outputs

    def calibrate(self, outputs: np.ndarray, targets: np.ndarray, seed: int = 0) -> dict[str, float]:
        """Fits the calibration on all validation outputs (what prediction will use) and returns the validation
        metrics measured honestly: cross-fitted over :data:`CALIBRATION_FOLDS` folds, plus the uncalibrated value
        of :attr:`calibration_metric`. Without a calibration to fit, the plain metrics."""
        before = self.calibration_state()
        if not self.fit_calibration(outputs, targets):
            return self.metrics(outputs, targets)
        fitted = self.calibration_state()
        n = len(targets)
        folds = np.array_split(np.random.default_rng(seed).permutation(n), min(CALIBRATION_FOLDS, n))
        crossed = np.zeros_like(outputs, dtype=np.float64)
        for fold in folds:
            rest = np.setdiff1d(np.arange(n), fold)
            self.set_calibration_state(before)
            if len(rest):
                self.fit_calibration(outputs[rest], targets[rest])
            crossed[fold] = self.apply_calibration(outputs[fold])
        self.set_calibration_state(before)
        uncalibrated = self.metrics(outputs, targets)
        honest = self.metrics(crossed.astype(np.float32), targets)
        self.set_calibration_state(fitted)
        if self.calibration_metric is not None:
            honest[f"{self.calibration_metric}_uncalibrated"] = uncalibrated[self.calibration_metric]
        return honest

    submission_proba: bool = False  # True: `predict` writes probabilities even without --proba


def pool_windows(outputs: np.ndarray, doc: np.ndarray, how: str, activation: str | None) -> np.ndarray:
    """One row per text from its windows' rows (``doc[i]`` is the text of window ``i``).

    ``mean_logits`` averages raw outputs. ``mean_proba`` averages probabilities and returns outputs that map
    back to exactly that mean (log for softmax, logit for sigmoid), so every consumer stays unchanged.
    """
    n = int(doc.max()) + 1 if len(doc) else 0
    counts = np.bincount(doc, minlength=n).astype(np.float64)[:, None]
    values = outputs.astype(np.float64)
    if how == "mean_proba" and activation == "softmax":
        values = softmax(values)
    elif how == "mean_proba" and activation == "sigmoid":
        values = sigmoid(values)
    sums = np.zeros((n, outputs.shape[1]))
    np.add.at(sums, doc, values)
    mean = sums / np.maximum(counts, 1)
    if how == "mean_proba" and activation == "softmax":
        return np.log(np.clip(mean, 1e-12, None)).astype(np.float32)
    if how == "mean_proba" and activation == "sigmoid":
        return logit(mean).astype(np.float32)
    return mean.astype(np.float32)
