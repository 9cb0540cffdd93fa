"""Inference: length-sorted batches restored to input order; the Predictor over a run directory."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from textune.data.batching import collate, inference_batches, to_device
from textune.data.io import read_table, require_columns
from textune.data.tokenize import Encoded
from textune.errors import TextuneError
from textune.recipe import Recipe, recipe_from_dict
from textune.rundir import verify_run_dir
from textune.tasks import Task, get_task


def autocast_for(device: torch.device, precision: str):
    """An autocast context for Accelerate-style precision names (``no|bf16|fp16``)."""
    if precision == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.inference_mode()
def infer_logits(
    model: torch.nn.Module,
    encoded: Encoded,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    precision: str = "no",
    extras: dict[str, np.ndarray] | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Model outputs for every row of ``encoded`` (or only ``rows``; the others stay 0), in input order.

    Batches run longest first; each output is scattered back to its own row.
    """
    model.eval()
    out: np.ndarray | None = None
    rows = np.arange(len(encoded)) if rows is None else np.asarray(rows)
    for sub in inference_batches(encoded.lengths[rows], batch_size):
        idx = rows[sub]
        batch = to_device(collate(encoded, idx, pad_id, extras), device)
        with autocast_for(device, precision):
            logits = model(**batch).logits
        logits = logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(encoded), logits.shape[1]), dtype=np.float32)
        out[idx] = logits  # scatter back: row i of the output is input row i
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _read_meta(path: Path) -> tuple[dict, dict, Path]:
    """(recipe, task state, model directory) of a run directory or an exported one."""
    import yaml

    from textune.export import META

    if (path / META).is_file() and not (path / "manifest.json").is_file():
        try:
            meta = json.loads((path / META).read_text())
            return meta["recipe"], meta["labels"], path
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise TextuneError(f"{path}/{META}: unreadable; export the run again") from None
    verify_run_dir(path)
    recipe = yaml.safe_load((path / "recipe.yaml").read_text())
    return recipe, json.loads((path / "labels.json").read_text()), path / "model"


class Predictor:
    """A trained run, ready to predict. ``Predictor.load("runs/NAME").predict(["some text"])``."""

    def __init__(
        self, run_dir: Path, recipe: Recipe, task: Task, model, tokenizer, device: torch.device, featurizer=None
    ):
        self.run_dir, self.recipe, self.task = run_dir, recipe, task
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.featurizer = featurizer

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None) -> Predictor:
        """Loads a run directory (after verifying its manifest checksums) or a ``textune export`` directory.

        Raises:
            TextuneError: the directory is missing, incomplete, from a newer textune or altered.
        """
        from transformers import AutoTokenizer

        from textune.models.build import load_model_dir

        run_dir = Path(run_dir)
        recipe_raw, labels, model_dir = _read_meta(run_dir)
        recipe = recipe_from_dict(recipe_raw, str(run_dir / "recipe.yaml"))
        task = get_task(recipe.task)(recipe)
        task.load_state(labels)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if (model_dir / "adapter_config.json").is_file():
            from textune.models.build import merge_adapter

            model = merge_adapter(model_dir, recipe, task.model_kwargs())
        else:
            model = load_model_dir(model_dir)
        model.to(dev).eval()
        featurizer = None
        features_json = run_dir / "features.json"
        if recipe.features.enabled and features_json.is_file():
            from textune.data.features import Featurizer

            featurizer = Featurizer.from_dict(recipe.features, json.loads(features_json.read_text()))
        return cls(run_dir, recipe, task, model, tokenizer, dev, featurizer)

    # -- inputs ----------------------------------------------------------------------------------------------
    def texts_of(self, data: pd.DataFrame | list[str] | str, source: str = "input") -> list[str]:
        if isinstance(data, str):
            return [data]
        if isinstance(data, pd.DataFrame):
            return self.task.texts(data, source)
        return [str(t) for t in data]

    def logits(self, data: pd.DataFrame | list[str] | str, source: str = "input") -> np.ndarray:
        texts = self.texts_of(data, source)
        encoded = self.task.encode(self.tokenizer, data if isinstance(data, pd.DataFrame) else texts, source)
        extras = None
        if self.featurizer is not None:
            frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(index=range(len(texts)))
            numeric, categorical = self.featurizer.transform(frame.reset_index(drop=True), texts, source)
            extras = {"numeric": numeric, "categorical": categorical}
        outputs = infer_logits(
            self.model,
            encoded,
            self.recipe.train.eval_batch_size,
            self.device,
            pad_id_of(self.tokenizer),
            extras=extras,
        )
        return self.task.combine_outputs(outputs, encoded)

    # -- outputs ---------------------------------------------------------------------------------------------
    def predict(self, data: pd.DataFrame | list[str] | str) -> list[Any]:
        """Predicted labels, one per input row/text, in input order."""
        frame = self.task.predictions(self.logits(data))
        return frame.iloc[:, 0].tolist()

    def predict_proba(self, data: pd.DataFrame | list[str] | str) -> pd.DataFrame:
        """One probability column per class, one row per input, in input order."""
        return self.task.predictions(self.logits(data), proba=True)

    def evaluate(self, df: pd.DataFrame, source: str = "input") -> dict[str, float]:
        for col, key in self.task.target_columns(df).items():
            require_columns(df, [col], source, key)
        targets = self.task.targets(df, source, "evaluation")
        return self.task.metrics(self.logits(df, source), targets)

    def read_input(self, path: str | Path) -> pd.DataFrame:
        df = read_table(path)
        for col, key in self.task.input_columns().items():
            require_columns(df, [col], path, f"the run's {key}")
        id_col = self.recipe.data.id
        if id_col and id_col in df.columns:
            dup = df[id_col].duplicated()
            if dup.any():
                first = df[id_col][dup].iloc[0]
                raise TextuneError(
                    f"{path}: column '{id_col}' has {int(dup.sum())} duplicate id(s) (first: {first!r} at file line "
                    f"{int(np.flatnonzero(dup.to_numpy())[0]) + 2}); ids must be unique"
                )
        return df

    def submission(self, df: pd.DataFrame, proba: bool = False, source: str = "input") -> pd.DataFrame:
        """Id column followed by the task's prediction columns, in input order."""
        id_col = self.recipe.data.id or "id"
        ids = df[id_col].reset_index(drop=True) if id_col in df.columns else pd.Series(range(len(df)))
        preds = self.task.predictions(self.logits(df, source), proba=proba or self.task.submission_proba)
        preds.insert(0, id_col, ids)
        return preds


def classify(run_or_predictor: str | Path | Predictor, text: str) -> Any:
    """The predicted label of one text: ``textune.classify("runs/NAME", "Wall St. Bears Claw Back")``."""
    predictor = run_or_predictor if isinstance(run_or_predictor, Predictor) else Predictor.load(run_or_predictor)
    return predictor.predict([text])[0]
