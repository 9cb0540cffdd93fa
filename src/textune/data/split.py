"""Seeded, stratified train/validation split."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)


def split_indices(
    n: int, fraction: float, seed: int, stratify: pd.Series | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns sorted ``(train_idx, valid_idx)``. Falls back to a plain split, with a warning, when a class has
    a single row (stratification needs two)."""
    idx = np.arange(n)
    strat = None
    if stratify is not None:
        counts = stratify.value_counts()
        if counts.min() >= 2:
            strat = stratify.to_numpy()
        else:
            small = counts[counts < 2].index.tolist()[:5]
            log.warning(
                "class(es) %s have a single row: the validation split is not stratified "
                "(add rows or give data.validation)",
                small,
            )
    n_valid = max(1, round(n * fraction))
    if strat is not None and n_valid < stratify.nunique():
        n_valid = int(stratify.nunique())  # stratification needs one row per class in validation
    tr, va = train_test_split(idx, test_size=n_valid, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(va)
