"""The Task interface: targets, head size, loss, metrics and prediction format of one task kind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from textune.recipe import Recipe


class Task(ABC):
    """A task kind. Fitted on train (label maps and similar state), saved as JSON with the run."""

    name: str
    main_metric: str
    greater_is_better: bool = True

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

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

    def stratify_on(self, df: pd.DataFrame) -> pd.Series | None:
        """The column to stratify the validation split on, if any."""
        return None

    def plots(self, out_dir: Path, logits: np.ndarray, targets: np.ndarray) -> list[Path]:
        """Task-specific plots of final validation outputs; the loss and metric curves are drawn elsewhere."""
        return []

    def state(self) -> dict[str, Any]:
        return {"task": self.name}

    def load_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        pass
