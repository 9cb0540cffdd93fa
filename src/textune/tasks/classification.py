"""Single-label text classification: softmax head, cross-entropy, accuracy and macro P/R/F1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from textune._math import softmax
from textune.data.io import rows_ref
from textune.errors import TextuneError
from textune.tasks.base import Task


def check_known_labels(seen: list[str], labels: list[str], path: str | Path, col: str) -> None:
    """Every label found in the training data must be one of the recipe's ``data.labels``."""
    extra = sorted(set(seen) - set(labels))
    if extra:
        raise TextuneError(
            f"{path}: label(s) {extra[:5]} in column '{col}' are not in data.labels; add them to data.labels"
        )


def label_model_kwargs(labels: list[str]) -> dict[str, Any]:
    """``from_pretrained`` arguments that name the head's outputs after the labels (saved in config.json)."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {lab: i for i, lab in enumerate(labels)},
    }


def _label_strings(series: pd.Series) -> pd.Series:
    """Labels as strings; "1.0" from a float column becomes "1" so files with and without NaN agree."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return v if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()

    return series.map(norm)


class ClassificationTask(Task):
    name = "classification"
    main_metric = "accuracy"
    min_labels = 2
    metric_directions = {
        "accuracy": "max",
        "precision_macro": "max",
        "recall_macro": "max",
        "f1_macro": "max",
        "log_loss": "min",
    }
    output_activation = "softmax"
    curve_metrics = ("accuracy", "precision_macro", "recall_macro", "f1_macro")

    def __init__(self, recipe):
        super().__init__(recipe)
        self.labels: list[str] = list(recipe.data.labels or [])
        self.class_weights: list[float] | None = None

    # -- fitting ---------------------------------------------------------------------------------------------
    def _check_missing(self, labels: pd.Series, path: str | Path, split: str) -> None:
        # "nan" is what str() of a float NaN gives (numpy/Excel exports): a missing label, not a class
        missing = labels.isna() | labels.astype(str).str.strip().str.lower().isin(["", "nan"])
        if missing.any():
            raise TextuneError(
                f"{path}: {int(missing.sum())} empty label(s) in column '{self.recipe.data.label}' of {split} "
                f"({rows_ref(np.flatnonzero(missing.to_numpy()))}); fill them or drop those rows"
            )

    def fit(self, train: pd.DataFrame, path: str | Path) -> None:
        col = self.recipe.data.label
        labels = _label_strings(train[col])
        self._check_missing(labels, path, "train")
        seen = sorted(set(labels), key=_natural_key)
        if self.labels:
            check_known_labels(seen, self.labels, path, col)
        else:
            self.labels = seen
        if len(set(seen)) < 2:
            raise TextuneError(
                f"{path}: column '{col}' holds a single class ({seen[0]!r}); classification needs at least two"
            )
        cw = self.recipe.train.class_weights
        if cw == "balanced":
            self.fit_statistics(train, path)  # on the whole file until the split hands over the training rows
        elif isinstance(cw, list):
            if len(cw) != len(self.labels):
                raise TextuneError(
                    f"train.class_weights: {len(cw)} weights for {len(self.labels)} labels {self.labels}"
                )
            self.class_weights = [float(w) for w in cw]

    def fit_statistics(self, train: pd.DataFrame, path: str | Path) -> None:
        """``class_weights: balanced``: inverse class frequencies of the training rows (validation rows excluded)."""
        if self.recipe.train.class_weights != "balanced":
            return
        counts = _label_strings(train[self.recipe.data.label]).value_counts()
        n, k = int(counts.sum()), len(self.labels)
        # a class that the split left out of train gets the weight of a class seen once
        self.class_weights = [float(n / (k * counts.get(lab, 1))) for lab in self.labels]

    @property
    def class_names(self) -> list[str] | None:
        return self.labels

    def targets(self, df: pd.DataFrame, path: str | Path, split: str) -> np.ndarray:
        labels = _label_strings(df[self.recipe.data.label])
        self._check_missing(labels, path, split)
        index = {lab: i for i, lab in enumerate(self.labels)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise TextuneError(
                f"{path}: {split} label(s) {unknown[:5]} in column '{self.recipe.data.label}' never occur in train; "
                f"fix the labels or list them in data.labels"
            )
        return labels.map(index).to_numpy(dtype=np.int64, copy=True)

    def stratify_on(self, df: pd.DataFrame) -> pd.Series | None:
        return _label_strings(df[self.recipe.data.label])

    # -- model -----------------------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def model_kwargs(self) -> dict[str, Any]:
        return label_model_kwargs(self.labels)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.class_weights is not None:
            weight = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        return F.cross_entropy(
            logits.float(), targets, weight=weight, label_smoothing=self.recipe.train.label_smoothing
        )

    # -- evaluation ------------------------------------------------------------------------------------------
    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support

        probs = softmax(logits)
        pred = probs.argmax(axis=1)
        p, r, f1, _ = precision_recall_fscore_support(targets, pred, average="macro", zero_division=0)
        out = {
            "accuracy": float(accuracy_score(targets, pred)),
            "precision_macro": float(p),
            "recall_macro": float(r),
            "f1_macro": float(f1),
            "log_loss": float(log_loss(targets, probs, labels=list(range(len(self.labels))))),
        }
        return out

    def predictions(self, logits: np.ndarray, proba: bool = False) -> pd.DataFrame:
        probs = softmax(logits)
        if proba:
            return pd.DataFrame(probs, columns=list(self.labels))
        return pd.DataFrame({self.recipe.data.label: [self.labels[i] for i in probs.argmax(axis=1)]})

    def plots(self, out_dir: Path, logits: np.ndarray, targets: np.ndarray) -> list[Path]:
        from sklearn.metrics import confusion_matrix

        from textune.report.plots import plot_confusion

        cm = confusion_matrix(targets, logits.argmax(axis=1), labels=list(range(len(self.labels))))
        return [plot_confusion(cm, self.labels, out_dir / "confusion_matrix.png")]

    def state(self) -> dict[str, Any]:
        return {"task": self.name, "labels": self.labels, "class_weights": self.class_weights}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
        self.class_weights = state.get("class_weights")


def _natural_key(label: str) -> tuple:
    """Sorts "2" before "10" when all labels are numbers, else alphabetically."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)
