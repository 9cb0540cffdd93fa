"""Regression (e.g. price from catalog text): target transforms, SMAPE-aware losses, SMAPE/MAE/RMSE/RMSLE/R².

The model predicts the standardised transformed target ``z = (t(y) - mean) / std`` (statistics from train), which
keeps a fresh head's outputs in range; predictions are mapped back with the inverse transform and clipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from textune.data.io import rows_ref
from textune.errors import TextuneError
from textune.tasks.base import Task

_FORWARD = {"none": lambda y: y, "log1p": np.log1p, "log": np.log}
_INVERSE_T = {"none": lambda z: z, "log1p": torch.expm1, "log": torch.exp}
_INVERSE_NP = {"none": lambda z: z, "log1p": np.expm1, "log": np.exp}


def smape_rows(pred, true):
    """Per-row SMAPE in [0, 2]: |p - y| / ((|p| + |y|) / 2), with 0/0 counted as 0 (both zero is a perfect guess).

    Works on numpy arrays and torch tensors alike.
    """
    lib = torch if isinstance(pred, torch.Tensor) else np
    num = 2 * lib.abs(pred - true)
    den = lib.abs(pred) + lib.abs(true)
    return lib.where(den == 0, lib.zeros_like(num), num / lib.where(den == 0, lib.ones_like(den), den))


def smape(pred: np.ndarray, true: np.ndarray) -> float:
    """SMAPE as a percentage (the competition's definition): 100 * mean(|p - y| / ((|p| + |y|) / 2))."""
    return float(100 * np.mean(smape_rows(np.asarray(pred, float), np.asarray(true, float))))


def focal_smape_rows(pred, true, gamma: float):
    """Each row's SMAPE s (in [0, 2]) weighted by itself to the power gamma: s * s**gamma, so hard rows count more.

    Written as s**(1 + gamma): the same value, but its slope at a perfect row (s = 0) is finite for any gamma >= 0,
    where the product form would give 0 * inf = nan for gamma < 1.
    """
    return smape_rows(pred, true) ** (1 + gamma)


def focal_smape(pred, true, gamma: float):
    """Focal SMAPE in percent: 100 * mean(s * s**gamma); gamma = 0 is plain SMAPE (:func:`smape`)."""
    return 100 * focal_smape_rows(pred, true, gamma).mean()


# The model is trained in float32: a larger target would become inf there (and its loss nan).
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class RegressionTask(Task):
    name = "regression"
    main_metric = "smape"
    metric_directions = {"smape": "min", "mae": "min", "rmse": "min", "rmsle": "min", "r2": "max"}
    curve_metrics = ("smape",)

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.regression
        self.column = recipe.data.target or recipe.data.label
        self.mean, self.std = 0.0, 1.0

    # -- targets ---------------------------------------------------------------------------------------------
    def target_columns(self, df: pd.DataFrame | None = None) -> dict[str, str]:
        return {self.column: "data.target" if self.recipe.data.target else "data.label"}

    def has_targets(self, df: pd.DataFrame) -> bool:
        return self.column in df.columns

    def targets(self, df: pd.DataFrame, path: str | Path, split: str) -> np.ndarray:
        raw = df[self.column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, copy=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            transformed = _FORWARD[self.cfg.transform](values)
        # float64 holds 1e39, float32 does not: such a target would train on inf, so it is as unusable as "n/a"
        bad = ~np.isfinite(values) | (np.abs(values) > _FLOAT32_MAX) | ~(np.abs(transformed) <= _FLOAT32_MAX)
        low = {"log": 0.0, "log1p": -1.0}.get(self.cfg.transform)
        if low is not None:
            bad |= values <= low
        if bad.any():
            example = raw.iloc[int(np.flatnonzero(bad)[0])]
            need = f" (the {self.cfg.transform} transform needs values > {low:g})" if low is not None else ""
            raise TextuneError(
                f"{path}: {int(bad.sum())} missing, non-numeric, infinite or out-of-range (beyond ±3.4e38, the "
                f"float32 limit) target(s) in column '{self.column}' of {split} ({rows_ref(np.flatnonzero(bad))}; e.g. "
                f"{example!r}){need}; fix or drop those rows"
            )
        return values.astype(np.float32)

    def fit(self, train: pd.DataFrame, path: str | Path) -> None:
        self.fit_statistics(train, path)  # checks every row; the whole file until the split hands over train rows

    def fit_statistics(self, train: pd.DataFrame, path: str | Path) -> None:
        """Mean and spread of the transformed target over the training rows (validation rows excluded)."""
        y = self.targets(train, path, "train")
        z = _FORWARD[self.cfg.transform](y.astype(np.float64))
        self.mean = float(z.mean())
        self.std = float(z.std()) or 1.0

    def stratify_on(self, df: pd.DataFrame) -> pd.Series | None:
        # deciles of the target: validation covers cheap and expensive items alike
        y = pd.to_numeric(df[self.column], errors="coerce")
        try:
            return pd.qcut(y.rank(method="first"), q=min(10, max(2, len(y) // 20)), labels=False).astype(str)
        except ValueError:
            return None

    # -- model -----------------------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return 1

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def baseline_outputs(self) -> str:
        return "values"

    def to_outputs(self, targets: np.ndarray) -> np.ndarray:
        """Targets in the model's output space: the standardised transform (the inverse of :meth:`to_original`)."""
        return (_FORWARD[self.cfg.transform](np.asarray(targets, np.float64)) - self.mean) / self.std

    def to_original(self, z):
        """From the model's standardised output to target units (clipped), for tensors or arrays."""
        inverse = _INVERSE_T if isinstance(z, torch.Tensor) else _INVERSE_NP
        t = z * self.std + self.mean
        if self.cfg.transform != "none":
            # exp of a wild early prediction would overflow: keep within the train range widened by e^10
            t = (
                t.clamp(max=self.mean + 10 * self.std + 10)
                if isinstance(z, torch.Tensor)
                else np.minimum(t, self.mean + 10 * self.std + 10)
            )
        y = inverse[self.cfg.transform](t)
        lo, hi = self.cfg.clip_min, self.cfg.clip_max
        if lo is not None or hi is not None:
            y = y.clamp(min=lo, max=hi) if isinstance(y, torch.Tensor) else np.clip(y, lo, hi)
        return y

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float().reshape(-1)
        y = targets.float().reshape(-1)
        kind = self.cfg.loss
        if self.cfg.loss_space == "original":
            pred, true = self.to_original(z), y
        else:
            fwd = {"none": lambda v: v, "log1p": torch.log1p, "log": torch.log}[self.cfg.transform]
            pred, true = z, (fwd(y) - self.mean) / self.std
            if kind in ("smape", "focal_smape"):  # SMAPE is scale-dependent: use the transformed values themselves
                pred, true = z * self.std + self.mean, fwd(y)
        if kind == "mse":
            return F.mse_loss(pred, true)
        if kind == "mae":
            return F.l1_loss(pred, true)
        if kind == "huber":
            return F.huber_loss(pred, true, delta=self.cfg.huber_delta)
        # both SMAPE losses in percent, like the smape metric: with loss_space original the training loss and the
        # validation smape are the same number (gradient clipping sees 100x the gradients of a fraction)
        if kind == "smape":
            return focal_smape(pred, true, 0.0)
        return focal_smape(pred, true, self.cfg.gamma)

    # -- evaluation ------------------------------------------------------------------------------------------
    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

        pred = self.to_original(np.asarray(logits, np.float64).reshape(-1))
        y = np.asarray(targets, np.float64).reshape(-1)
        return {
            "smape": smape(pred, y),
            "mae": float(mean_absolute_error(y, pred)),
            "rmse": float(np.sqrt(mean_squared_error(y, pred))),
            "rmsle": float(np.sqrt(np.mean((np.log1p(np.maximum(pred, 0)) - np.log1p(np.maximum(y, 0))) ** 2))),
            "r2": float(r2_score(y, pred)) if len(y) > 1 else float("nan"),
        }

    def predictions(self, logits: np.ndarray, proba: bool = False) -> pd.DataFrame:
        pred = self.to_original(np.asarray(logits, np.float64).reshape(-1))
        return pd.DataFrame({self.column: pred})

    def plots(self, out_dir: Path, logits: np.ndarray, targets: np.ndarray) -> list[Path]:
        from textune.report.plots import plot_regression

        pred = self.to_original(np.asarray(logits, np.float64).reshape(-1))
        return plot_regression(pred, np.asarray(targets, np.float64), out_dir)

    def state(self) -> dict[str, Any]:
        return {"task": self.name, "target": self.column, "mean": self.mean, "std": self.std}

    def load_state(self, state: dict[str, Any]) -> None:
        self.mean, self.std = float(state["mean"]), float(state["std"])
