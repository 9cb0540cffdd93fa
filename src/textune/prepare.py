"""The one data path, from a recipe to ready splits: read, check, split, fit the task, encode tokens, features.

``train``, ``tune``, ``check`` and ``baseline`` all call :func:`prepare`, so each sees exactly the rows, targets,
tokens and features the others see. Every check runs here, before any of them writes a file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textune.data.io import read_table, require_columns, row_ref, sample_rows, sha256_file
from textune.data.split import split_indices
from textune.errors import TextuneError
from textune.recipe import Recipe
from textune.tasks import Task, get_task


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


@dataclass
class Prepared:
    """What training (and tune, check, baseline) start from."""

    task: Task
    splits: dict[str, Split]
    tokenizer: Any = None
    featurizer: Any = None
    tokenize_seconds: float = 0.0


def prepare(recipe: Recipe, *, tokens: bool = True, features: bool = True) -> Prepared:
    """Builds the task, reads and splits the data, and (optionally) tokenizes every split and fits the features.

    Args:
        recipe: the validated recipe.
        tokens: load the tokenizer, check ``data.max_length`` against the model and encode every split.
        features: fit the tabular features on train (when the recipe has any) and attach them to every split.

    Raises:
        TextuneError: any unusable file, column, label, id or setting, before anything is written.
    """
    task = get_task(recipe.task)(recipe)
    splits = load_splits(recipe, task)
    out = Prepared(task, splits)
    if tokens:
        from textune.models.backbone import load_tokenizer
        from textune.models.build import check_max_length

        m = recipe.model
        out.tokenizer = load_tokenizer(m.name, m.allow_network, m.trust_remote_code)
        check_max_length(m.name, recipe.data.max_length, out.tokenizer, m.allow_network, m.trust_remote_code)
        t0 = time.perf_counter()
        for split in splits.values():
            task.encode_split(out.tokenizer, split)
        out.tokenize_seconds = time.perf_counter() - t0
    if features and recipe.features.enabled:
        from textune.features import Featurizer, attach_features

        out.featurizer = Featurizer(recipe.features)
        attach_features(out.featurizer, splits)  # statistics from train only
    return out


def load_splits(recipe: Recipe, task: Task) -> dict[str, Split]:
    """Reads train (and validation/test when given), fits the task and encodes targets.

    The task sees the whole training file first (label set, every row's target checked, with the file's row
    numbers); its statistics (class weights, target mean/std) are then fitted on the training rows alone.

    Raises:
        TextuneError: any unusable file, column or label, before anything is written.
    """
    d = recipe.data
    train_df = read_train(recipe)
    # train's ids key predictions only when validation rows are held out of it (a separate validation file keys
    # its own): only then must they be unique (a retrain on train + validation may repeat them)
    require_inputs(train_df, task, d.train, recipe, unique_ids=not d.validation)
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
    task.fit_statistics(train_df, d.train)

    splits = {}
    for name, df, path in (("train", train_df, d.train), ("validation", valid_df, valid_path)):
        require_inputs(df, task, path, recipe, unique_ids=name == "validation" or not d.validation)
        splits[name] = Split(name, path, df, task.texts(df, path), task.targets(df, path, name))
    if d.test:
        test_df = read_table(d.test)
        for col, key in task.input_columns().items():
            require_columns(test_df, [col], d.test, key)
        _check_ids(test_df, recipe, d.test)
        targets = task.targets(test_df, d.test, "test") if task.has_targets(test_df) else None
        splits["test"] = Split("test", d.test, test_df, task.texts(test_df, d.test), targets)
    return splits


def read_train(recipe: Recipe, row_column: str | None = None) -> pd.DataFrame:
    """``data.train``, cut to ``data.max_rows`` (seeded); with ``row_column``, each row's number among the file's
    data rows (from 0, before the cut) kept in that column."""
    d = recipe.data
    if not d.train:
        raise TextuneError("data.train: no training file given; set data.train: path/to/train.csv")
    df = read_table(d.train)
    if row_column is not None:
        if row_column in df.columns:
            raise TextuneError(f"{d.train}: column '{row_column}' is reserved by textune; rename it")
        df[row_column] = np.arange(len(df))
    return sample_rows(df, d.max_rows, recipe.train.seed)


def require_inputs(df: pd.DataFrame, task: Task, path: str, recipe: Recipe, unique_ids: bool = True) -> None:
    """Every input and target column the task reads must exist (the error names the recipe key), and ``data.id``
    (where set) must name a column with an id in every row, each once unless ``unique_ids`` is off."""
    for col, key in {**task.input_columns(), **task.target_columns(df)}.items():
        require_columns(df, [col], path, key)
    _check_ids(df, recipe, path, unique_ids)


def _check_ids(df: pd.DataFrame, recipe: Recipe, path: str, unique: bool = True) -> None:
    """``data.id`` keys predictions and submissions: it must name a column, and every id must be there once."""
    col = recipe.data.id
    if col is None:
        return
    require_columns(df, [col], path, "data.id")
    if not unique:
        return
    ids = df[col]
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    if blank.any():
        first = int(np.flatnonzero(blank.to_numpy())[0])
        raise TextuneError(
            f"{path}: {int(blank.sum())} empty id(s) in column '{col}' (data.id), first at {row_ref(first)}; fill "
            f"them or set data.id to a column with an id in every row"
        )
    check_unique_ids(ids, path, col)


def check_unique_ids(ids: pd.Series, path: str | Path, col: str) -> None:
    """Ids must be unique: a submission keyed by a repeated id is ambiguous."""
    dup = ids.duplicated()
    if dup.any():
        first = int(np.flatnonzero(dup.to_numpy())[0])
        raise TextuneError(
            f"{path}: column '{col}' has {int(dup.sum())} duplicate id(s) (first: {ids.iloc[first]!r} at "
            f"{row_ref(first)}); ids must be unique"
        )


def data_hashes(recipe: Recipe) -> dict[str, str]:
    return {
        k: sha256_file(p)
        for k in ("train", "validation", "test")
        if (p := getattr(recipe.data, k)) and Path(p).is_file()
    }
