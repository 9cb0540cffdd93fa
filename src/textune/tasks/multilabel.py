"""Multi-label classification: any number of labels per text; sigmoid head, binary cross-entropy.

Labels come as one delimited string column (``data.label`` with ``data.label_sep``, e.g. "sports,politics") or as
several 0/1 columns (``data.label_columns``). One threshold per label is tuned on validation F1 and saved with
the run, since a rare label's best threshold is rarely 0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from textune import _atomic
from textune._math import logit, sigmoid
from textune.data.io import row_ref, rows_ref
from textune.errors import TextuneError
from textune.tasks.base import Task
from textune.tasks.classification import check_known_labels, label_model_kwargs

GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def best_threshold(probs: np.ndarray, truth: np.ndarray, default: float) -> float:
    """The grid threshold with the best F1 for one label (ties: the one closest to ``default``)."""
    from sklearn.metrics import f1_score

    if truth.sum() == 0:
        return default  # a label absent from validation gives no evidence
    scores = [f1_score(truth, probs >= t, zero_division=0) for t in GRID]
    best = max(scores)
    candidates = [t for t, s in zip(GRID, scores, strict=True) if s >= best - 1e-12]
    return float(min(candidates, key=lambda t: abs(t - default)))


class MultilabelTask(Task):
    name = "multilabel"
    main_metric = "f1_micro"
    metric_directions = {"f1_micro": "max", "f1_macro": "max", "subset_accuracy": "max", "hamming_accuracy": "max"}
    calibration_metric = "f1_micro"
    min_labels = 1
    output_activation = "sigmoid"
    curve_metrics = ("f1_micro", "f1_macro", "subset_accuracy")

    def __init__(self, recipe):
        super().__init__(recipe)
        self.labels: list[str] = list(recipe.data.label_columns or recipe.data.labels or [])
        self.thresholds: list[float] | None = None

    # -- columns and targets ---------------------------------------------------------------------------------
    def target_columns(self, df: pd.DataFrame | None = None) -> dict[str, str]:
        d = self.recipe.data
        if d.label_columns:
            return {c: "data.label_columns" for c in d.label_columns}
        return {d.label: "data.label"}

    def has_targets(self, df: pd.DataFrame) -> bool:
        return all(c in df.columns for c in self.target_columns())

    def _sets(self, df: pd.DataFrame) -> list[list[str]]:
        sep = self.recipe.data.label_sep
        cells = df[self.recipe.data.label].fillna("").astype(str)
        return [[p.strip() for p in c.split(sep) if p.strip()] if c.strip() else [] for c in cells]

    def fit(self, train: pd.DataFrame, path: str | Path) -> None:
        d = self.recipe.data
        if not d.label_columns:
            seen = sorted({lab for s in self._sets(train) for lab in s})
            if d.labels:
                check_known_labels(seen, d.labels, path, d.label)
            else:
                self.labels = seen
        if not self.labels:
            raise TextuneError(f"{path}: no labels found in column '{d.label}'; multilabel needs at least one")
        self.targets(train, path, "train")

    def targets(self, df: pd.DataFrame, path: str | Path, split: str) -> np.ndarray:
        d = self.recipe.data
        if d.label_columns:
            values = df[d.label_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isin(values, (0, 1)).all(axis=1)
            if bad.any():
                raise TextuneError(
                    f"{path}: {int(bad.sum())} {split} row(s) ({rows_ref(np.flatnonzero(bad))}) hold a "
                    f"value other than 0 or 1 in {', '.join(d.label_columns)}; fix those cells"
                )
            return values.astype(np.float32)
        index = {lab: i for i, lab in enumerate(self.labels)}
        out = np.zeros((len(df), len(self.labels)), dtype=np.float32)
        for r, labels in enumerate(self._sets(df)):
            for lab in labels:
                if lab not in index:
                    raise TextuneError(
                        f"{path}: {split} {row_ref(r)}: label {lab!r} in column '{d.label}' never occurs in "
                        f"train; fix it or list it in data.labels"
                    )
                out[r, index[lab]] = 1
        return out

    # -- model -----------------------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def model_kwargs(self) -> dict[str, Any]:
        return {**label_model_kwargs(self.labels), "problem_type": "multi_label_classification"}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())

    # -- thresholds, metrics, outputs ------------------------------------------------------------------------
    def threshold_array(self) -> np.ndarray:
        if self.thresholds is not None:
            return np.asarray(self.thresholds)
        return np.full(len(self.labels), self.recipe.multilabel.threshold)

    def decide(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits) >= self.threshold_array()

    def fit_calibration(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        cfg = self.recipe.multilabel
        if not cfg.tune_thresholds:
            return {}
        before = self.metrics(outputs, targets)["f1_micro"]
        probs = sigmoid(outputs)
        self.thresholds = [best_threshold(probs[:, j], targets[:, j], cfg.threshold) for j in range(probs.shape[1])]
        return {"f1_micro_before": before, "f1_micro_after": self.metrics(outputs, targets)["f1_micro"]}

    def calibration_state(self) -> list[float] | None:
        return None if self.thresholds is None else list(self.thresholds)

    def set_calibration_state(self, state: list[float] | None) -> None:
        self.thresholds = None if state is None else list(state)

    def apply_calibration(self, outputs: np.ndarray) -> np.ndarray:
        """Logits shifted so that the default threshold decides as the tuned per-label thresholds do."""
        default = self.recipe.multilabel.threshold
        return outputs - logit(self.threshold_array()) + logit(np.full(outputs.shape[1], default))

    def baseline_outputs(self) -> str:
        return "per_label"

    @property
    def class_names(self) -> list[str] | None:
        return None  # targets are label sets: check does not count them as classes

    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        pred = self.decide(logits).astype(int)
        truth = targets.astype(int)
        return {
            "f1_micro": float(f1_score(truth, pred, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(truth, pred, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(truth, pred)),
            "hamming_accuracy": float((truth == pred).mean()),
        }

    def per_label(self, logits: np.ndarray, targets: np.ndarray) -> pd.DataFrame:
        """Precision, recall, F1, support and threshold of each label."""
        from sklearn.metrics import precision_recall_fscore_support

        p, r, f1, support = precision_recall_fscore_support(
            targets.astype(int), self.decide(logits).astype(int), average=None, zero_division=0
        )
        return pd.DataFrame(
            {
                "label": self.labels,
                "precision": p,
                "recall": r,
                "f1": f1,
                "support": support,
                "threshold": self.threshold_array(),
            }
        )

    def predictions(self, logits: np.ndarray, proba: bool = False) -> pd.DataFrame:
        if proba:
            return pd.DataFrame(sigmoid(logits), columns=list(self.labels))
        sep = self.recipe.data.label_sep
        sets = [sep.join(lab for lab, on in zip(self.labels, row, strict=True) if on) for row in self.decide(logits)]
        name = self.recipe.data.label if not self.recipe.data.label_columns else "labels"
        return pd.DataFrame({name: sets})

    def plots(self, out_dir: Path, logits: np.ndarray, targets: np.ndarray) -> list[Path]:
        # The per-label table sits with the plots: it is the figure a reader looks for next to them.
        path = out_dir / "per_label.csv"
        table = self.per_label(logits, targets)
        _atomic.write_with(path, lambda p: table.to_csv(p, index=False))
        return [path]

    def state(self) -> dict[str, Any]:
        return {"task": self.name, "labels": self.labels, "thresholds": self.thresholds}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
        self.thresholds = state.get("thresholds")
