"""Output activations on numpy arrays and fold statistics, written once for every task, baseline and ensemble."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (shifted by the row maximum, so large logits do not overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def logit(p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Inverse of :func:`sigmoid`, with probabilities clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def cv_statistics(fold_metrics: list[dict[str, float]], pooled: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per metric: the mean and (sample) standard deviation over the folds, and the value on the pooled rows."""
    out = {}
    for name in dict.fromkeys(n for m in fold_metrics for n in m):
        values = [float(m[name]) for m in fold_metrics if isinstance(m.get(name), int | float)]
        out[name] = {
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "oof": pooled.get(name),
        }
    return out
