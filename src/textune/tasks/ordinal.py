"""Ordered levels (CEFR A1 < A2 < ... < C2): a cumulative 'above level k' head (CORAL-style) or plain softmax.

With ``ordinal.head: coral`` the model has K-1 outputs, output k the logit of P(level > k), trained with binary
cross-entropy on the K-1 "is above k" targets (Cao, Mirjalili & Raschka 2020 use one shared weight vector and K-1
biases; here each threshold has its own weights, which the shared-backbone model makes cheap). Level
probabilities are differences of the cumulative ones, so log loss and probability outputs exist for both heads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from textune._math import softmax
from textune.tasks.classification import ClassificationTask, _label_strings

log = logging.getLogger(__name__)


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """Cohen's kappa with quadratic weights over levels ``0..k-1`` (1 = perfect, 0 = chance agreement)."""
    observed = np.zeros((k, k), dtype=np.float64)
    np.add.at(observed, (np.asarray(y_true), np.asarray(y_pred)), 1)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / max(observed.sum(), 1)
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    weights = (i - j) ** 2 / max((k - 1) ** 2, 1)
    denom = (weights * expected).sum()
    # Both raters constant and equal: no disagreement is possible; sklearn returns nan here, a score is kinder.
    return 1.0 if denom == 0 else float(1 - (weights * observed).sum() / denom)


def cumulative_to_levels(logits: np.ndarray) -> np.ndarray:
    """Level probabilities from K-1 'above level k' logits: P(y=k) = P(y>k-1) - P(y>k), made monotone first."""
    above = 1 / (1 + np.exp(-logits.astype(np.float64)))
    # Independent thresholds can cross (P(>2) > P(>1)); the running minimum restores a valid distribution.
    above = np.minimum.accumulate(above, axis=1)
    n = len(above)
    upper = np.concatenate([np.ones((n, 1)), above], axis=1)
    lower = np.concatenate([above, np.zeros((n, 1))], axis=1)
    probs = np.clip(upper - lower, 1e-7, None)
    return probs / probs.sum(axis=1, keepdims=True)


class OrdinalTask(ClassificationTask):
    name = "ordinal"
    main_metric = "qwk"
    metric_directions = {
        "qwk": "max",
        "accuracy": "max",
        "adjacent_accuracy": "max",
        "mean_abs_level_error": "min",
        "log_loss": "min",
    }
    curve_metrics = ("qwk", "accuracy", "adjacent_accuracy")

    @property
    def coral(self) -> bool:
        return self.recipe.ordinal.head == "coral"

    @property
    def output_activation(self) -> str:  # type: ignore[override]
        return "sigmoid" if self.coral else "softmax"

    def baseline_outputs(self) -> str:
        return "cumulative" if self.coral else "classes"

    def fit(self, train: pd.DataFrame, path: str | Path) -> None:
        if not self.recipe.data.labels:
            log.warning(
                "ordinal: data.labels is not set, so the level order is the sorted label values %s; list the "
                "levels from lowest to highest in data.labels to be sure",
                sorted(set(_label_strings(train[self.recipe.data.label]).dropna())),
            )
        super().fit(train, path)

    # -- model -----------------------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.labels) - 1 if self.coral else len(self.labels)

    def model_kwargs(self) -> dict[str, Any]:
        if not self.coral:
            return super().model_kwargs()
        names = [f">{lab}" for lab in self.labels[:-1]]
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)},
        }

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.coral:
            return super().loss(logits, targets)
        k = torch.arange(logits.shape[1], device=logits.device)
        above = (targets.unsqueeze(1) > k).float()  # row i, column k: is level_i above level k?
        return F.binary_cross_entropy_with_logits(logits.float(), above)

    # -- evaluation ------------------------------------------------------------------------------------------
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return cumulative_to_levels(logits) if self.coral else softmax(logits)

    def levels(self, logits: np.ndarray) -> np.ndarray:
        if self.coral:
            # CORAL's rule: the level is the number of thresholds passed (P(y > k) > 0.5)
            return (np.minimum.accumulate(logits, axis=1) > 0).sum(axis=1)
        return logits.argmax(axis=1)

    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, log_loss

        pred = self.levels(logits)
        err = np.abs(pred - targets)
        k = len(self.labels)
        return {
            "qwk": quadratic_weighted_kappa(targets, pred, k),
            "accuracy": float(accuracy_score(targets, pred)),
            "adjacent_accuracy": float((err <= 1).mean()),
            "mean_abs_level_error": float(err.mean()),
            "log_loss": float(log_loss(targets, self.probabilities(logits), labels=list(range(k)))),
        }

    def predictions(self, logits: np.ndarray, proba: bool = False) -> pd.DataFrame:
        if proba:
            return pd.DataFrame(self.probabilities(logits), columns=list(self.labels))
        return pd.DataFrame({self.recipe.data.label: [self.labels[i] for i in self.levels(logits)]})

    def plots(self, out_dir: Path, logits: np.ndarray, targets: np.ndarray) -> list[Path]:
        from sklearn.metrics import confusion_matrix

        from textune.report.plots import plot_confusion

        k = len(self.labels)
        cm = confusion_matrix(targets, self.levels(logits), labels=list(range(k)))
        return [plot_confusion(cm, self.labels, out_dir / "confusion_matrix.png")]

    def state(self) -> dict[str, Any]:
        return {**super().state(), "task": self.name, "head": self.recipe.ordinal.head}
