"""The Predictor: a run directory (or an exported one) ready to predict, through the one inference path.

A run records the precision it evaluated with; the Predictor infers with that precision (where this machine
computes it natively; ``precision=`` overrides), so ``textune predict`` on the validation file reproduces
``predictions/validation.csv`` on the machine that trained. The loop's final predictions go through the same
:meth:`Predictor.outputs`, which is also where the calibration (temperature, thresholds) was fitted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from textune import startup
from textune.data.io import read_table, require_columns
from textune.errors import TextuneError
from textune.models.infer import infer_logits, pad_id_of
from textune.recipe import Recipe, recipe_from_dict
from textune.run import layout, verify_run_dir
from textune.tasks import Task, get_task

log = logging.getLogger(__name__)


ENGINES = ("torch", "onnx", "onnx-int8")


def _onnx_model(export_dir: Path, engine: str):
    """The ONNX Runtime model of a ``textune export --onnx`` directory for ``engine`` (``onnx`` / ``onnx-int8``)."""
    from textune.onnx_export import INT8_FILE, ONNX_FILE, OnnxRuntimeModel

    if engine not in ENGINES:
        raise TextuneError(f"engine '{engine}': expected one of {', '.join(ENGINES)}")
    name = INT8_FILE if engine == "onnx-int8" else ONNX_FILE
    path = export_dir / name
    if not path.is_file():
        flags = "--onnx --int8" if engine == "onnx-int8" else "--onnx"
        raise TextuneError(
            f"{export_dir}: has no {name}; engine '{engine}' runs an export: textune export RUN --out DIR {flags}"
        )
    return OnnxRuntimeModel(path, threads=torch.get_num_threads())


def _read_meta(path: Path) -> tuple[dict, dict, dict | None, str | None, Path]:
    """(recipe, task state, feature statistics, precision, model directory) of a run or an exported directory."""
    if layout.is_export_dir(path):
        meta = layout.read_json(path / layout.EXPORT_META, layout.EXPORT_META)
        try:
            return meta["recipe"], meta["labels"], meta.get("features"), meta.get("precision"), path
        except (KeyError, TypeError):
            raise TextuneError(f"{path}/{layout.EXPORT_META}: unreadable; export the run again") from None
    manifest = verify_run_dir(path)
    recipe = layout.read_recipe_raw(path)
    return recipe, layout.read_task_state(path), layout.read_features(path), manifest.get("precision"), path / "model"


def inference_precision(saved: str | None, device: torch.device, requested: str | None = None) -> str:
    """The precision to predict with: ``requested`` if given, else the run's own where this device computes it
    natively; bf16 on a CPU without native bf16 would be emulated (~100x slower), so fp32 is used there."""
    from textune.device import PRECISION_NAMES as PRECISIONS
    from textune.device import native_bf16

    if requested is not None:
        if requested not in PRECISIONS:
            raise TextuneError(f"--precision: unknown precision '{requested}'; choose fp32, bf16 or fp16")
        return PRECISIONS[requested]
    chosen = saved or "no"
    if chosen == "bf16" and not native_bf16(device):
        log.warning("the run evaluated in bf16, which %s does not compute natively: predicting in fp32", device)
        return "no"
    if chosen == "fp16" and device.type != "cuda":
        return "no"  # fp16 autocast is a GPU path
    return chosen


class Predictor:
    """A trained run, ready to predict. ``Predictor.load("runs/NAME").predict(["some text"])``."""

    def __init__(
        self,
        run_dir: Path,
        recipe: Recipe,
        task: Task,
        model,
        tokenizer,
        device: torch.device,
        featurizer=None,
        precision: str = "no",
    ):
        self.run_dir, self.recipe, self.task = run_dir, recipe, task
        self.model, self.tokenizer, self.device = model, tokenizer, device
        if isinstance(model, torch.nn.Module):  # a first-token head: its logits need that token's row alone
            from textune.models.build import encoder_layers
            from textune.models.first_token import first_token_last_layer

            first_token_last_layer(model, encoder_layers(model))
        self.featurizer = featurizer
        self.precision = precision

    @classmethod
    def load(
        cls, run_dir: str | Path, device: str | None = None, precision: str | None = None, engine: str = "torch"
    ) -> Predictor:
        """Loads a run directory (after verifying its manifest checksums) or a ``textune export`` directory.

        Args:
            run_dir: the run or exported directory.
            device: ``cpu``, ``cuda``, ``cuda:1``... (default: cuda when available).
            precision: ``fp32``, ``bf16`` or ``fp16``; default: the precision the run evaluated with.
            engine: ``torch``, or for a ``textune export --onnx`` directory ``onnx`` (its fp32 graph) or
                ``onnx-int8`` (``--int8``'s graph) under ONNX Runtime on the CPU; the rest of the path is the same.

        Raises:
            TextuneError: the directory is missing, incomplete, from a newer textune or altered.
        """
        from transformers import AutoTokenizer

        from textune.models.build import load_model_dir

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise TextuneError(f"{run_dir}: run directory not found")
        if layout.is_baseline_dir(run_dir):
            raise TextuneError(
                f"{run_dir}: is a baseline (scores to beat, no saved model); predict with a fine-tuned run"
            )
        from textune.ensemble import is_combined_dir, load_combined

        if is_combined_dir(run_dir):  # a cross-validated run or a fitted ensemble: its members, combined
            if engine != "torch":
                raise TextuneError(f"{run_dir}: engine '{engine}' runs a single exported model; this is an ensemble")
            return load_combined(run_dir, cls, device=device, precision=precision)
        recipe_raw, state, features, saved_precision, model_dir = _read_meta(run_dir)
        recipe = recipe_from_dict(recipe_raw, str(run_dir / layout.RECIPE))
        task = get_task(recipe.task)(recipe)
        try:
            task.load_state(state)
        except (KeyError, TypeError, ValueError):
            raise TextuneError(f"{run_dir}: the task state is malformed; the run directory is corrupted") from None
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        from textune.device import setup_cuda_speed

        setup_cuda_speed()  # TF32 matmuls as in the training process, whose final predictions this must reproduce
        if engine != "torch":
            if precision not in (None, "fp32"):
                raise TextuneError(f"--precision {precision}: engine '{engine}' runs its graph as exported; drop it")
            dev, precision, saved_precision = torch.device("cpu"), None, "no"
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            if engine != "torch":
                model = _onnx_model(run_dir, engine)
            elif (model_dir / "adapter_config.json").is_file():
                from textune.models.build import merge_adapter

                model = merge_adapter(model_dir, recipe, task.model_kwargs())
            else:
                model = load_model_dir(model_dir)
        except TextuneError:
            raise
        except Exception as exc:  # weights or config altered and re-checksummed: refuse, do not crash
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise TextuneError(f"{model_dir}: the model cannot be loaded ({first}); train or export it again") from None
        model.to(dev).eval()
        featurizer = None
        if recipe.features.enabled:
            from textune.features import Featurizer

            if features is None:
                raise TextuneError(f"{run_dir}: the recipe uses features but {layout.FEATURES} is missing")
            featurizer = Featurizer.from_dict(recipe.features, features)
        startup.resume()  # the `textune` command's start-up ends with the (first) model loaded: textune/startup.py
        return cls(
            run_dir,
            recipe,
            task,
            model,
            tokenizer,
            dev,
            featurizer,
            inference_precision(saved_precision, dev, precision),
        )

    # -- inputs ----------------------------------------------------------------------------------------------
    def texts_of(self, data: pd.DataFrame | list[str] | str, source: str = "input") -> list[str]:
        if isinstance(data, str):
            return [data]
        if isinstance(data, pd.DataFrame):
            return self.task.texts(data, source)
        return [str(t) for t in data]

    def logits(self, data: pd.DataFrame | list[str] | str, source: str = "input") -> np.ndarray:
        """One output row per input row (windows pooled, both preference orders combined), input order."""
        texts = self.texts_of(data, source)
        # no disk token cache: a file or a request is predicted once, and a cache write costs two fsyncs
        inputs = data if isinstance(data, pd.DataFrame) else texts
        encoded = self.task.encode(self.tokenizer, inputs, source, use_cache=False)
        extras = None
        if self.featurizer is not None:
            frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(index=range(len(texts)))
            numeric, categorical = self.featurizer.transform(frame.reset_index(drop=True), texts, source)
            extras = {"numeric": numeric, "categorical": categorical}
        return self.outputs(encoded, extras)

    def outputs(self, encoded, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The model's outputs on already encoded rows, combined per input row: the step every path shares."""
        raw = infer_logits(
            self.model,
            encoded,
            self.recipe.train.eval_batch_size,
            self.device,
            pad_id_of(self.tokenizer),
            self.precision,
            extras,
        )
        return self.task.combine_outputs(raw, encoded)

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
        """A file to predict: it must hold the run's input columns and, when the run has ``data.id``, unique ids."""
        from textune.prepare import check_unique_ids

        df = read_table(path)
        for col, key in self.task.input_columns().items():
            require_columns(df, [col], path, f"the run's {key}")
        id_col = self.recipe.data.id
        if id_col:
            require_columns(df, [id_col], path, "the run's data.id (submissions are keyed by it)")
            check_unique_ids(df[id_col], path, id_col)
        return df

    def submission(self, df: pd.DataFrame, proba: bool = False, source: str = "input") -> pd.DataFrame:
        """Id column, the predicted label(s), and with ``proba`` (or for tasks scored on probabilities) one
        probability column per class; rows in input order."""
        id_col = self.recipe.data.id
        if id_col:  # a submission keyed by row numbers under the id header would look right and be wrong
            require_columns(df, [id_col], source, "the run's data.id (submissions are keyed by it)")
        logits = self.logits(df, source)
        return prediction_frame(self.task, df, logits, id_col, proba=proba, with_targets=False)

    def predict_file(
        self,
        input: str | Path,
        output: str | Path,
        *,
        proba: bool = False,
        chunk_rows: int = 20_000,
        progress=None,
        shard: tuple[int, int] | None = None,
    ) -> int:
        """Streams a file: rows are read, tokenized and predicted ``chunk_rows`` at a time (memory bounded by the
        chunk), appended to a temporary file, and the submission appears at ``output`` atomically at the end.

        Args:
            input: CSV/TSV/JSONL/Parquet with the run's input columns (and ``data.id`` when the run has one).
            output: the submission CSV (the same table as :meth:`submission`).
            proba: add one probability column per class.
            chunk_rows: rows per chunk.
            progress: a tqdm-like bar updated with the rows done (or None).
            shard: ``(rank, world)`` under torchrun (``textune predict --processes N``): every process reads and
                checks the whole file, predicts chunks ``rank, rank + world, ...`` into a parts folder beside
                ``output``, and rank 0 joins the parts in file order once all are done (torch.distributed barrier).

        Returns:
            The number of rows in the file.

        Raises:
            TextuneError: a missing column, a repeated or missing id (anywhere in the file), an unreadable file;
                nothing is written then.
        """
        from textune import _atomic

        rank, world = shard or (0, 1)
        chunks = self._predicted_chunks(input, chunk_rows, proba, progress, rank, world)
        if world == 1:
            n = 0

            def write(tmp: Path) -> None:
                nonlocal n
                with open(tmp, "w", encoding="utf-8", newline="") as f:
                    for _, frame, rows in chunks:
                        frame.to_csv(f, header=n == 0, index=False, quoting=_atomic.csv_quoting(frame))
                        n += rows

            _atomic.write_with(Path(output), write)
            return n
        return _write_sharded(Path(output), chunks, rank)

    def check_file(self, input: str | Path, chunk_rows: int = 20_000) -> int:
        """Reads ``input`` in chunks as :meth:`predict_file` does and raises its errors (columns, ids), predicting
        nothing; returns the row count. ``predict --processes N`` calls it before launching the processes."""
        return sum(rows for _, _, rows in self._predicted_chunks(input, chunk_rows, False, None, -1, 1))

    def _predicted_chunks(self, input, chunk_rows: int, proba: bool, progress, rank: int, world: int):
        """Yields ``(index, submission frame or None, rows)`` per chunk of ``input``: every chunk is checked (ids
        unique across the whole file), chunks ``rank::world`` are predicted (none for rank -1)."""
        from textune.data.io import iter_table, rows_ref

        id_col = self.recipe.data.id
        seen: set = set()
        n = 0
        for i, chunk in enumerate(iter_table(input, chunk_rows)):
            for col, key in self.task.input_columns().items():
                require_columns(chunk, [col], input, f"the run's {key}")
            if id_col:
                require_columns(chunk, [id_col], input, "the run's data.id (submissions are keyed by it)")
                ids = chunk[id_col]
                repeated = ids.duplicated() | ids.isin(seen)
                if repeated.any():
                    first = int(np.flatnonzero(repeated.to_numpy())[0])
                    raise TextuneError(
                        f"{input}: column '{id_col}' has {int(repeated.sum())} duplicate id(s) (first: "
                        f"{ids.iloc[first]!r} at {rows_ref([first + n])}); ids must be unique"
                    )
                seen.update(ids.tolist())
            frame = None
            if i % world == rank:
                frame = self.submission(chunk.reset_index(drop=True), proba=proba, source=str(input))
                if not id_col:  # row numbers of the whole file, not of the chunk
                    frame["id"] += n
                if progress is not None:
                    progress.update(len(frame))
            yield i, frame, len(chunk)
            n += len(chunk)


def _write_sharded(output: Path, chunks, rank: int) -> int:
    """One process's share of a sharded prediction: its chunks into ``.OUTPUT.textune-parts/``, then (rank 0) the
    parts joined in file order into ``output``, atomically. Returns the file's row count."""
    import shutil
    from datetime import timedelta

    import torch.distributed as dist

    from textune import _atomic

    owned = not dist.is_initialized()
    if owned:  # a rank with one chunk fewer waits at the last barrier for a whole chunk of the others: no 30 min limit
        dist.init_process_group("gloo", timeout=timedelta(days=1))
    parts = output.parent / f".{output.name}.textune-parts"
    try:
        if rank == 0:
            shutil.rmtree(parts, ignore_errors=True)  # a crashed earlier attempt's leftovers
            parts.mkdir(parents=True)
        dist.barrier()
        n, count = 0, 0
        for i, frame, rows in chunks:
            count = i + 1
            if frame is not None:
                _atomic.write_with(
                    parts / f"{i:08d}.csv",
                    lambda tmp, f=frame, first=i == 0: f.to_csv(
                        tmp, header=first, index=False, quoting=_atomic.csv_quoting(f)
                    ),
                )
            n += rows
        dist.barrier()
        if rank == 0:
            names = [parts / f"{i:08d}.csv" for i in range(count)]
            missing = [p.name for p in names if not p.is_file()]
            if missing:  # e.g. processes on several machines without a shared filesystem
                raise TextuneError(
                    f"predict --processes: {len(missing)} of {count} parts missing in {parts} (first: {missing[0]}); "
                    "every process must see the output's folder"
                )

            def join(tmp: Path) -> None:
                with open(tmp, "wb") as out:
                    for part in names:
                        with open(part, "rb") as f:
                            shutil.copyfileobj(f, out)

            _atomic.write_with(output, join)
            shutil.rmtree(parts, ignore_errors=True)
        return n
    finally:
        if owned:
            dist.destroy_process_group()


def prediction_frame(
    task: Task,
    df: pd.DataFrame,
    logits: np.ndarray,
    id_col: str | None,
    proba: bool = True,
    with_targets: bool = True,
) -> pd.DataFrame:
    """Saved predictions (``with_targets``): the id, the true target column(s) when known, ``pred_*`` and (for
    probabilistic tasks) ``proba_*`` columns. Submissions: the id, then the predicted label(s); with ``proba`` also
    one probability column per class; for tasks scored on probabilities (preference) the probabilities alone,
    the competition's format, unless ``proba`` asks for the label too. Without ``data.id`` the id column is ``id``
    with the 0-based row number.
    """
    preds = task.predictions(logits)
    probs = task.predictions(logits, proba=True)
    probabilistic = list(probs.columns) != list(preds.columns)  # regression has no probabilities
    if with_targets:
        parts = [preds.add_prefix("pred_")] + ([probs.add_prefix("proba_")] if probabilistic else [])
    elif task.submission_proba and not proba:
        parts = [probs]
    else:
        parts = [preds] + ([probs] if proba and probabilistic else [])
    frame = pd.concat(parts, axis=1)
    ids = df[id_col].reset_index(drop=True) if id_col and id_col in df.columns else pd.Series(np.arange(len(df)))
    frame.insert(0, id_col or "id", ids)
    if with_targets:
        for i, col in enumerate(c for c in task.target_columns(df) if c in df.columns):
            frame.insert(1 + i, col, df[col].reset_index(drop=True))
    return frame


def classify(run_or_predictor: str | Path | Predictor, text: str) -> Any:
    """The predicted label of one text: ``textune.classify("runs/NAME", "Wall St. Bears Claw Back")``."""
    predictor = run_or_predictor if isinstance(run_or_predictor, Predictor) else Predictor.load(run_or_predictor)
    return predictor.predict([text])[0]
