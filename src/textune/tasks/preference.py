"""Pairwise preference (Chatbot Arena / LLM-classification shape): which of two responses to a prompt wins.

Inputs are three fields, ``prompt``, ``response_a``, ``response_b``, each plain text or a JSON list of strings
(multi-turn, as in the Kaggle CSV). The model reads ``[CLS] prompt [SEP] response_a [SEP] response_b [SEP]`` with
a token share per field, so a long prompt or response never pushes another response out entirely. Outcomes are
(a, b, tie). Training also sees every pair swapped (labels swapped); evaluation and prediction average the
two orders with labels swapped back, which makes the prediction for (b, a) the mirror image of (a, b).
A temperature fitted on validation calibrates the probabilities (log loss is the competition metric).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from textune._math import softmax
from textune.data.io import row_ref, rows_ref
from textune.errors import TextuneError
from textune.tasks.base import Task

OUTCOMES = ("a", "b", "tie")
PROBA_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
SWAP = [1, 0, 2]  # outcome index after swapping the responses: a <-> b, tie stays
DEFAULT_SHARES = [0.2, 0.4, 0.4]
_LABEL_NAMES = {
    "a": 0,
    "model_a": 0,
    "winner_model_a": 0,
    "b": 1,
    "model_b": 1,
    "winner_model_b": 1,
    "tie": 2,
    "winner_tie": 2,
    "tie (bothbad)": 2,
}


def parse_cells(values: pd.Series, column: str, path: str | Path) -> list[str]:
    """Cell texts of one column: plain strings, or (when every non-empty cell starts with '[') JSON lists of
    strings joined by blank lines. A cell of a JSON column that is not such a list is an error naming it.

    Raises:
        TextuneError: a malformed JSON cell, with its data row (1 = first row after the header) and column.
    """
    cells = values.fillna("").astype(str).tolist()
    filled = [c.strip() for c in cells if c.strip()]
    if not filled or not all(c.startswith("[") for c in filled):
        return cells
    out = []
    for i, cell in enumerate(cells):
        if not cell.strip():
            out.append("")
            continue
        where = f"{path}: {row_ref(i)}, column '{column}'"
        try:
            items = json.loads(cell)
        except json.JSONDecodeError as exc:
            raise TextuneError(
                f"{where}: not a valid JSON list of strings ({exc.msg} at character {exc.pos}); the column holds "
                f'JSON lists, so fix this cell or write it as ["..."]'
            ) from None
        if not isinstance(items, list) or not all(x is None or isinstance(x, str) for x in items):
            raise TextuneError(
                f'{where}: holds a JSON {type(items).__name__} that is not a list of strings; write ["...", ...]'
            )
        # None turns up in the Kaggle data for a turn without an answer: an empty turn, not the text "None".
        out.append("\n\n".join(x for x in items if x))
    return out


class PreferenceTask(Task):
    name = "preference"
    main_metric = "log_loss"
    metric_directions = {
        "log_loss": "min",
        "log_loss_uncalibrated": "min",
        "accuracy": "max",
        "f1_a": "max",
        "f1_b": "max",
        "f1_tie": "max",
        "f1_macro": "max",
    }
    calibration_metric = "log_loss"
    curve_metrics = ("accuracy", "f1_macro")
    submission_proba = True

    def __init__(self, recipe):
        super().__init__(recipe)
        if recipe.features.enabled:
            # swapped rows (swap_augment, symmetric_eval) are not input rows: per-row feature arrays would be
            # indexed past their end, and length differences would need swapping too
            raise TextuneError(
                "features: the preference task does not take tabular features yet; remove the features section"
            )
        self.temperature = 1.0
        self.label_source: list[str] | None = None
        self.labels = list(OUTCOMES)  # the class order of the outputs (check counts them, baselines fit them)

    # -- columns ---------------------------------------------------------------------------------------------
    def input_columns(self) -> dict[str, str]:
        d = self.recipe.data
        return {d.prompt: "data.prompt", d.response_a: "data.response_a", d.response_b: "data.response_b"}

    def _label_source(self, df: pd.DataFrame | None) -> list[str]:
        d = self.recipe.data
        if self.label_source is not None:
            return self.label_source
        if d.label_columns:
            if len(d.label_columns) != 3:
                raise TextuneError(
                    f"data.label_columns: preference needs 3 columns (a wins, b wins, tie), got {d.label_columns}"
                )
            return list(d.label_columns)
        if df is not None and d.label not in df.columns and all(c in df.columns for c in PROBA_COLUMNS):
            return list(PROBA_COLUMNS)
        return [d.label]

    def target_columns(self, df: pd.DataFrame | None = None) -> dict[str, str]:
        key = "data.label_columns" if len(self._label_source(df)) == 3 else "data.label"
        return {c: key for c in self._label_source(df)}

    def has_targets(self, df: pd.DataFrame) -> bool:
        return all(c in df.columns for c in self._label_source(df))

    # -- fitting and targets ---------------------------------------------------------------------------------
    def fit(self, train: pd.DataFrame, path: str | Path) -> None:
        shares = self.recipe.data.field_shares
        if shares is not None and (len(shares) != 3 or min(shares) <= 0):
            raise TextuneError(f"data.field_shares: preference takes 3 positive shares [prompt, a, b], got {shares}")
        self.label_source = self._label_source(train)
        for col in self.input_columns():
            if col in train.columns:
                parse_cells(train[col], col, path)  # on the whole file, so a bad cell's row number is the file's
        targets = self.targets(train, path, "train")
        if len(np.unique(targets)) < 2:
            raise TextuneError(f"{path}: every training pair has the same outcome; preference needs at least two")

    def targets(self, df: pd.DataFrame, path: str | Path, split: str) -> np.ndarray:
        cols = self._label_source(df)
        if len(cols) == 3:
            values = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
            bad = np.isnan(values).any(axis=1) | ~np.isin(values, (0, 1)).all(axis=1) | (values.sum(axis=1) != 1)
            if bad.any():
                raise TextuneError(
                    f"{path}: {int(bad.sum())} {split} row(s) ({rows_ref(np.flatnonzero(bad))}) do not hold "
                    f"exactly one 1 and two 0s in {', '.join(cols)}; fix those rows"
                )
            return values.argmax(axis=1).astype(np.int64)
        raw = df[cols[0]].astype(str).str.strip().str.lower()
        mapped = raw.map(_LABEL_NAMES)
        if mapped.isna().any():
            unknown = sorted(set(raw[mapped.isna()]))[:5]
            raise TextuneError(
                f"{path}: {split} value(s) {unknown} in column '{cols[0]}' are not a preference outcome; use a, b "
                f"or tie (or give data.label_columns: [winner_model_a, winner_model_b, winner_tie])"
            )
        return mapped.to_numpy(dtype=np.int64)

    def stratify_on(self, df: pd.DataFrame) -> pd.Series | None:
        return pd.Series(self.targets(df, "train", "train"))

    # -- inputs ----------------------------------------------------------------------------------------------
    def fields(self, df: pd.DataFrame, path: str | Path) -> list[list[str]]:
        return [parse_cells(df[c], c, path) for c in self.input_columns()]

    def encoding_policy(self) -> dict[str, Any]:
        d = self.recipe.data
        if d.truncation == "chunks":
            raise TextuneError("data.truncation: 'chunks' is for one long text; preference uses field shares")
        return {"side": d.truncation, "head": d.head_tokens, "shares": d.field_shares or DEFAULT_SHARES}

    def encode(self, tokenizer, inputs, path: str | Path = "input", train: bool = False, use_cache: bool = True):
        from textune.data.tokenize import concat, encode_fields

        if not isinstance(inputs, pd.DataFrame):
            if isinstance(inputs, list) and all(isinstance(r, dict) for r in inputs):
                inputs = pd.DataFrame(inputs)
            else:
                raise TextuneError(
                    f"{path}: preference inputs are rows with {', '.join(self.input_columns())}; pass a DataFrame "
                    f"or a list of dicts"
                )
        for col, key in self.input_columns().items():
            if col not in inputs.columns:
                raise TextuneError(f"{path}: column '{col}' (from {key}) not found")
        prompt, a, b = self.fields(inputs, path)
        d, cfg = self.recipe.data, self.recipe.preference
        policy = self.encoding_policy()
        straight, _ = encode_fields(tokenizer, [prompt, a, b], d.max_length, policy, use_cache)
        if not (cfg.swap_augment if train else cfg.symmetric_eval):
            return straight
        swapped, _ = encode_fields(tokenizer, [prompt, b, a], d.max_length, policy, use_cache)
        return concat([straight, swapped])

    def row_targets(self, targets: np.ndarray, encoded) -> np.ndarray:
        if encoded.doc is None:
            return targets
        t = targets[encoded.doc]
        return np.where(encoded.variant == 1, np.asarray(SWAP)[t], t)

    def combine_outputs(self, outputs: np.ndarray, encoded) -> np.ndarray:
        """Log-probabilities per pair; with both orders encoded, the mean of the two orders' probabilities
        (the swapped order's a/b columns swapped back)."""
        probs = softmax(outputs.astype(np.float64))
        if encoded is not None and encoded.variant is not None and (encoded.variant == 1).any():
            n = int((encoded.variant == 0).sum())
            straight = np.zeros((n, 3))
            swapped = np.zeros((n, 3))
            straight[encoded.doc[encoded.variant == 0]] = probs[encoded.variant == 0]
            swapped[encoded.doc[encoded.variant == 1]] = probs[encoded.variant == 1][:, SWAP]
            probs = (straight + swapped) / 2
        return np.log(np.clip(probs, 1e-12, None)).astype(np.float32)

    # -- model -----------------------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return 3

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "num_labels": 3,
            "id2label": dict(enumerate(OUTCOMES)),
            "label2id": {o: i for i, o in enumerate(OUTCOMES)},
        }

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.recipe.train.label_smoothing)

    # -- calibration, evaluation, outputs --------------------------------------------------------------------
    def probabilities(self, outputs: np.ndarray, temperature: float | None = None) -> np.ndarray:
        t = self.temperature if temperature is None else temperature
        return softmax(outputs.astype(np.float64) / t)

    @property
    def single_text(self) -> bool:
        return False

    @property
    def compared_fields(self) -> list[tuple[int, int]]:
        return [(1, 2)]  # response a against response b (longer answers win more often)

    @property
    def class_names(self) -> list[str] | None:
        return self.labels

    def calibration_state(self) -> float:
        return self.temperature

    def set_calibration_state(self, state: float) -> None:
        self.temperature = float(state)

    def apply_calibration(self, outputs: np.ndarray) -> np.ndarray:
        """Outputs divided by the temperature: at temperature 1 they give the calibrated probabilities."""
        return outputs / self.temperature

    def fit_calibration(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Temperature minimising validation log loss (searched on log T, so T stays positive)."""
        if not self.recipe.preference.calibrate:
            return {}
        from scipy.optimize import minimize_scalar
        from sklearn.metrics import log_loss

        def nll(log_t: float) -> float:
            return float(log_loss(targets, self.probabilities(outputs, float(np.exp(log_t))), labels=[0, 1, 2]))

        res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        before = nll(0.0)
        self.temperature = float(np.exp(res.x)) if res.fun < before else 1.0
        return {"temperature": self.temperature, "log_loss_before": before, "log_loss_after": min(res.fun, before)}

    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support

        probs = self.probabilities(logits)
        pred = probs.argmax(axis=1)
        _, _, f1, _ = precision_recall_fscore_support(targets, pred, labels=[0, 1, 2], zero_division=0)
        return {
            "log_loss": float(log_loss(targets, probs, labels=[0, 1, 2])),
            "log_loss_uncalibrated": float(log_loss(targets, self.probabilities(logits, 1.0), labels=[0, 1, 2])),
            "accuracy": float(accuracy_score(targets, pred)),
            "f1_a": float(f1[0]),
            "f1_b": float(f1[1]),
            "f1_tie": float(f1[2]),
            "f1_macro": float(np.mean(f1)),
        }

    def predictions(self, logits: np.ndarray, proba: bool = False) -> pd.DataFrame:
        probs = self.probabilities(logits)
        if proba:
            return pd.DataFrame(probs, columns=list(PROBA_COLUMNS))
        return pd.DataFrame({"winner": [OUTCOMES[i] for i in probs.argmax(axis=1)]})

    def plots(self, out_dir: Path, logits: np.ndarray, targets: np.ndarray) -> list[Path]:
        from sklearn.metrics import confusion_matrix

        from textune.report.plots import plot_confusion

        cm = confusion_matrix(targets, self.probabilities(logits).argmax(axis=1), labels=[0, 1, 2])
        return [plot_confusion(cm, list(OUTCOMES), out_dir / "confusion_matrix.png")]

    def state(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "labels": list(OUTCOMES),
            "temperature": self.temperature,
            "label_source": self.label_source,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.temperature = float(state.get("temperature", 1.0))
        self.label_source = state.get("label_source")
