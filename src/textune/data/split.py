"""Seeded, stratified train/validation split."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)


def split_indices(
    n: int, fraction: float, seed: int, stratify: pd.Series | None = None, warn: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Returns sorted ``(train_idx, valid_idx)``; ``train_idx`` is empty when ``n`` is too small to split.

    Stratification needs two rows of every class and room for one row per class on each side. When the data
    cannot give that, the split falls back to a plain seeded one and says so (``warn=False``, from the
    recipe's ``data.warn_unstratified``, silences it).
    """
    idx = np.arange(n)
    if n < 2:
        return idx[:0], idx
    n_valid = min(n - 1, max(1, round(n * fraction)))
    strat = None
    if stratify is not None:
        counts = stratify.value_counts()
        k = len(counts)
        n_strat = max(n_valid, k)  # stratification needs one row per class in validation...
        if counts.min() < 2:
            reason = f"class(es) {counts[counts < 2].index.tolist()[:5]} have a single row"
        elif n - n_strat < k:  # ...and in train
            reason = f"{n} rows are too few to keep each of the {k} classes on both sides"
        else:
            strat, n_valid, reason = stratify.to_numpy(), n_strat, ""
        if reason and warn:
            log.warning(
                "%s: the validation split is not stratified (add rows, give data.validation, or set "
                "data.warn_unstratified: false to silence this)",
                reason,
            )
    tr, va = train_test_split(idx, test_size=n_valid, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(va)
