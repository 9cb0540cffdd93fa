"""From a recipe to ready splits: read, check, split, render texts, encode targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from textune.data.io import read_table, require_columns, sample_rows, sha256_file
from textune.data.split import split_indices
from textune.errors import TextuneError
from textune.recipe import Recipe
from textune.tasks.base import Task


@dataclass
class Split:
    """One split: its rows, their texts and (if labelled) encoded targets."""

    name: str
    path: str
    df: pd.DataFrame
    texts: list[str]
    targets: np.ndarray | None = None
    encoded: object | None = field(default=None, repr=False)
    # per-row model inputs besides tokens (fusion features): name -> array indexed by row
    extras: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def ids(self, id_col: str | None) -> pd.Series:
        if id_col and id_col in self.df.columns:
            return self.df[id_col].reset_index(drop=True)
        return pd.Series(np.arange(len(self.df)), name="id")


def load_splits(recipe: Recipe, task: Task) -> dict[str, Split]:
    """Reads train (and validation/test when given), fits the task on train and encodes targets.

    Raises:
        TextuneError: any unusable file, column or label, before anything is written.
    """
    d = recipe.data
    if not d.train:
        raise TextuneError("data.train: no training file given; set data.train: path/to/train.csv")
    train_df = read_table(d.train)
    train_df = sample_rows(train_df, d.max_rows, recipe.train.seed)
    _require(train_df, task, d.train)
    task.fit(train_df, d.train)

    if d.validation:
        valid_df = read_table(d.validation)
        valid_path = d.validation
    else:
        strat = task.stratify_on(train_df)
        tr, va = split_indices(len(train_df), d.valid_fraction, recipe.train.seed, strat, d.warn_unstratified)
        if len(tr) == 0:
            raise TextuneError(
                f"{d.train}: too few rows ({len(train_df)}) to hold out a validation split; add rows or give "
                f"data.validation"
            )
        valid_df = train_df.iloc[va].reset_index(drop=True)
        train_df = train_df.iloc[tr].reset_index(drop=True)
        valid_path = f"{d.train} (held-out {d.valid_fraction:.0%})"

    splits = {}
    for name, df, path in (("train", train_df, d.train), ("validation", valid_df, valid_path)):
        _require(df, task, path)
        splits[name] = Split(name, path, df, task.texts(df, path), task.targets(df, path, name))
    if d.test:
        test_df = read_table(d.test)
        targets = task.targets(test_df, d.test, "test") if task.has_targets(test_df) else None
        splits["test"] = Split("test", d.test, test_df, task.texts(test_df, d.test), targets)
    return splits


def _require(df: pd.DataFrame, task: Task, path: str) -> None:
    """Every input and target column the task reads must exist (the error names the recipe key)."""
    for col, key in {**task.input_columns(), **task.target_columns(df)}.items():
        require_columns(df, [col], path, key)


def data_hashes(recipe: Recipe) -> dict[str, str]:
    return {
        k: sha256_file(p)
        for k in ("train", "validation", "test")
        if (p := getattr(recipe.data, k)) and Path(p).is_file()
    }
