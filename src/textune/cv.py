"""Cross-validation as a first-class run: K fold runs, out-of-fold predictions and a fold-ensemble predictor.

``train_cv(recipe, out=PARENT)`` (the recipe's ``cv: {folds: K}`` or ``folds=K``) assigns every training row to
one of K folds (stratified as the task stratifies its validation split; grouped when ``cv.group`` names a column,
so rows sharing a value never straddle folds; a pure function of the seed), then trains K ordinary runs::

    PARENT/recipe.yaml            the recipe, cv section included
    PARENT/folds/k/               a run directory: train() on fold k's training rows, validated on its held-out rows
    PARENT/folds/k/.data/         train.parquet and validation.parquet: those rows, with a hidden row-number column
    PARENT/oof.csv                every training row's out-of-fold prediction, in file order (``row``: its number
                                  among the file's data rows from 0: row 0 is file line 2, "data row 1" in errors)
    PARENT/oof_outputs.csv        the same rows' folds, encoded targets and raw outputs (what ensembles fit on)
    PARENT/summary.json           kind cv: each metric's mean and std over folds and on the pooled out-of-fold rows
    PARENT/ensemble.json, task.json, manifest.json, predictions/test.csv (data.test, by the fold ensemble)

``Predictor.load(PARENT)`` averages the K fold models in the task's space (see :mod:`textune.ensemble`). A re-run
on the same PARENT skips finished folds, resumes a fold killed mid-way from its checkpoint (or restarts it), and
refuses a different recipe. The rows cross-validated are ``data.train``'s (after ``data.max_rows``); a
``data.validation`` file is not used, since each fold is validated on its own held-out rows.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textune import _atomic, startup
from textune._math import cv_statistics
from textune.data.io import read_table, require_columns, rows_ref, sha256_file
from textune.ensemble import (
    ENSEMBLE,
    FILE_ROW,
    FOLDS,
    OOF,
    OOF_CSV,
    ROW,
    from_space,
    summary_kind,
    to_space,
    write_combined_manifest,
    write_oof,
)
from textune.errors import TextuneError
from textune.predict import Predictor, prediction_frame
from textune.prepare import data_hashes, read_train, require_inputs
from textune.recipe import Recipe, dump_recipe, recipe_from_dict
from textune.run import RunLock, layout, new_run_dir
from textune.tasks import Task, get_task
from textune.training.loop import train
from textune.training.trackers import TrackingInfo

log = logging.getLogger(__name__)

DATA = ".data"  # a dot-folder: train() treats a directory holding only dot-files as empty, so a fold can start


# -- folds -------------------------------------------------------------------------------------------------------
def resolve_folds(recipe: Recipe, folds: int | None = None) -> int | None:
    """The number of folds: ``folds`` when given (0 turns cross-validation off), else ``cv.folds``.

    Raises:
        TextuneError: 1 or a negative number.
    """
    k = recipe.cv.folds if folds is None else folds
    if k is not None and (k < 0 or k == 1):
        raise TextuneError(f"--folds: {k}; give 2 or more folds (0 turns cross-validation off)")
    return k or None


def assign_folds(
    n: int,
    folds: int,
    seed: int,
    stratify: pd.Series | None = None,
    groups: pd.Series | None = None,
    warn: bool = True,
) -> np.ndarray:
    """The fold (0..folds-1) of each of ``n`` rows: a pure function of its arguments.

    Stratified on ``stratify`` (each fold's count of a class is within one row of ``count / folds``) when a class
    has at least ``folds`` rows; grouped on ``groups`` (no value in two folds; sizes balanced, and stratified as far
    as whole groups allow); otherwise a seeded shuffle cut into ``folds`` parts.

    Raises:
        TextuneError: fewer rows (or groups) than folds.
    """
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    if folds < 2:
        raise TextuneError(f"cv.folds: {folds}; give 2 or more")
    if n < folds:
        raise TextuneError(f"cv.folds: {folds} folds need at least {folds} training rows; the data has {n}")
    y = None
    if stratify is not None:
        counts = stratify.value_counts()
        if counts.max() < folds:
            if warn:
                log.warning("no class has %d rows: the folds are not stratified", folds)
        else:
            y = stratify.astype(str).to_numpy()
            if warn and counts.min() < folds:
                few = counts[counts < folds].index.tolist()[:5]
                log.warning("class(es) %s have fewer rows than the %d folds: some folds hold none of them", few, folds)
    if groups is not None:
        g = groups.astype(str).to_numpy()
        if len(np.unique(g)) < folds:
            raise TextuneError(f"cv.group: {len(np.unique(g))} distinct value(s), fewer than the {folds} folds")
        # one class when not stratified: StratifiedGroupKFold then only balances fold sizes, seeded (GroupKFold
        # takes a seed only from scikit-learn 1.6 on)
        y = np.zeros(n, dtype=np.int64) if y is None else y
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    else:
        g = None
        splitter = (StratifiedKFold if y is not None else KFold)(folds, shuffle=True, random_state=seed)
    out = np.full(n, -1, dtype=np.int64)
    with warnings.catch_warnings():  # sklearn's "least populated class" warning: said above, in our words
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, held) in enumerate(splitter.split(np.zeros((n, 1)), y, g)):
            out[held] = k
    return out


@dataclass
class CVData:
    """Every training row, checked, with its fold."""

    df: pd.DataFrame  # file order (after data.max_rows), with the FILE_ROW column
    path: str
    task: Task  # fitted on every row: the label set and order shared by all folds
    targets: np.ndarray
    folds: np.ndarray
    seed: int

    @property
    def rows(self) -> np.ndarray:
        return self.df[FILE_ROW].to_numpy(dtype=np.int64)


def load_cv_data(recipe: Recipe, folds: int | None = None) -> CVData:
    """Reads ``data.train``, checks every row as :func:`textune.prepare.prepare` does, and assigns the folds.

    Raises:
        TextuneError: an unusable file, column, label, id or group, before anything is written.
    """
    d, cv = recipe.data, recipe.cv
    k = resolve_folds(recipe, folds)
    if not k:
        raise TextuneError("cv.folds: cross-validation is off; set cv.folds (or --folds) to 2 or more")
    if d.validation:
        log.warning(
            "data.validation (%s) is not used by cross-validation: each fold validates on its own rows", d.validation
        )
    df = read_train(recipe, row_column=FILE_ROW)
    task = get_task(recipe.task)(recipe)
    require_inputs(df, task, d.train, recipe)  # ids unique: oof.csv is keyed by them
    task.fit(df, d.train)
    task.fit_statistics(df, d.train)
    targets = task.targets(df, d.train, "train")
    groups = None
    if cv.group:
        require_columns(df, [cv.group], d.train, "cv.group")
        groups = df[cv.group]
        if groups.isna().any():
            raise TextuneError(
                f"{d.train}: {int(groups.isna().sum())} empty value(s) in column '{cv.group}' (cv.group) at "
                f"{rows_ref(np.flatnonzero(groups.isna().to_numpy()))}; fill them (a row of its own: a unique value)"
            )
    seed = recipe.train.seed if cv.seed is None else cv.seed
    assignment = assign_folds(len(df), k, seed, task.stratify_on(df), groups, d.warn_unstratified)
    return CVData(df, d.train, task, targets, assignment, seed)


def write_oof_files(run_dir: Path, recipe: Recipe, data: CVData, outputs: np.ndarray) -> None:
    """``oof.csv`` (the columns of predictions/validation.csv, the row number first) and ``oof_outputs.csv``."""
    frame = prediction_frame(data.task, data.df, outputs, recipe.data.id)
    frame.insert(0, ROW if ROW not in frame.columns else FILE_ROW, data.rows)
    _atomic.write_csv(Path(run_dir) / OOF_CSV, frame)
    write_oof(run_dir, OOF(data.rows, data.folds, data.targets, outputs))


# -- the run -----------------------------------------------------------------------------------------------------
def is_cv_dir(path: str | Path) -> bool:
    """A cross-validation parent (finished or not): its saved recipe has ``cv.folds`` and it is no ensemble."""
    if (Path(path) / ENSEMBLE).is_file() and summary_kind(path) == "ensemble":
        return False
    try:
        raw = layout.read_recipe_raw(Path(path))
    except TextuneError:
        return False
    return bool((raw.get("cv") or {}).get("folds"))


def train_cv(
    recipe: Recipe | None = None,
    out: str | Path | None = None,
    folds: int | None = None,
    resume: str | Path | None = None,
) -> Path:
    """Cross-validates the recipe: K fold runs, then the out-of-fold predictions, scores and fold ensemble.

    Args:
        recipe: the validated recipe (default with ``resume``: the one saved in the parent).
        out: the parent directory (default ``output.dir/output.name``, or recipe name + timestamp). Running again
            on it continues: finished folds are skipped, a fold killed mid-way resumes.
        folds: K (overrides ``cv.folds``; 2 or more).
        resume: a parent directory to continue (same as ``out`` with its saved recipe).

    Returns:
        The parent directory.

    Raises:
        TextuneError: bad recipe or data (nothing is written), or a parent holding something else.
    """
    if resume is not None:
        out = Path(resume)
        if not is_cv_dir(out):
            raise TextuneError(f"{out}: not a cross-validation run (no recipe.yaml with cv.folds); check the path")
        saved = recipe_from_dict(layout.read_recipe_raw(out), str(out / layout.RECIPE))
        saved._stem = recipe._stem if recipe is not None else out.name
        recipe = saved
    elif recipe is None:
        raise TextuneError("train_cv: give a recipe, or resume=PARENT")
    stem = recipe._stem
    recipe = recipe.model_copy(deep=True)
    recipe._stem = stem
    recipe.cv.folds = resolve_folds(recipe, folds)
    startup.resume()  # the `textune` command's start-up ends before data is read (see textune/startup.py)
    data = load_cv_data(recipe)  # every check runs before anything is written
    if out is None:
        name = recipe.output.name
        out = Path(recipe.output.dir) / name if name else new_run_dir(recipe.output.dir, None, stem)
    parent = Path(out).resolve()  # fold recipes name their data by absolute paths: resumable from any directory
    fresh = _claim(parent, recipe)
    _check_same_data(parent, data, fresh)
    if not fresh and (parent / layout.MANIFEST).is_file():
        log.info("%s: cross-validation already complete", parent)
        return parent
    with RunLock(parent):
        if fresh:
            layout.write_recipe(parent, dump_recipe(recipe))
            _atomic.write_json(parent / FOLD_DATA, _data_fingerprint(data))
        for k in range(recipe.cv.folds):
            _run_fold(parent, recipe, data, k)
        _assemble(parent, recipe, data)
    return parent


FOLD_DATA = "folds.json"  # what the folds were cut from: a re-run on changed data must not reuse finished folds


def _data_fingerprint(data: CVData) -> dict:
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(data.rows).tobytes() + np.ascontiguousarray(data.folds).tobytes())
    h.update(pd.util.hash_pandas_object(data.df, index=False).to_numpy().tobytes())  # the rows' contents too
    return {"rows": int(len(data.rows)), "assignment_sha256": h.hexdigest()}


def _check_same_data(parent: Path, data: CVData, fresh: bool) -> None:
    """Finished folds were trained on the data and fold assignment of the first run: a continued run must see the
    same, or their out-of-fold predictions would come from models that saw those rows."""
    path = parent / FOLD_DATA
    if fresh or not path.is_file():
        return
    if layout.read_json(path, FOLD_DATA) != _data_fingerprint(data):
        raise TextuneError(
            f"{parent}: its folds were cut from other data (a training file or the fold assignment changed since); "
            f"start a new cross-validation with another --out"
        )


def _claim(parent: Path, recipe: Recipe) -> bool:
    """Whether ``parent`` is new; an existing parent must hold a cross-validation of this very recipe."""
    if not parent.exists() or all(p.name.startswith(".") for p in parent.iterdir()):
        return True
    if not (parent / layout.RECIPE).is_file() or not is_cv_dir(parent):
        raise TextuneError(f"{parent}: not empty and not a cross-validation run; pick another --out")
    saved = layout.read_recipe_raw(parent)
    diff = _first_difference({**saved, "output": None}, {**recipe.to_dict(), "output": None})
    if diff is not None:
        raise TextuneError(
            f"{parent}: holds a cross-validation of another recipe ({diff} differs); pick another --out, or run "
            f"the same recipe to continue it"
        )
    return False


def _first_difference(a: Any, b: Any, key: str = "") -> str | None:
    """The dotted key where two recipe mappings first differ, None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in dict.fromkeys([*a, *b]):
            found = _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
        return None
    return None if a == b else key or "(top level)"


def _run_fold(parent: Path, recipe: Recipe, data: CVData, k: int) -> None:
    """Trains fold k, or resumes it, or skips it when finished (its manifest, written last, is there)."""
    fold_dir = parent / FOLDS / str(k)
    if (fold_dir / layout.MANIFEST).is_file():
        log.info("fold %d: finished, skipped", k)
        return
    train_file, valid_file = _write_fold_data(fold_dir, data, k)
    tracking = TrackingInfo(run_name=f"{parent.name}-fold{k}", mlflow_dir=parent.parent / "mlruns")
    log.info("fold %d of %d: %d training rows, %d held out", k + 1, recipe.cv.folds, *_fold_sizes(data, k))
    if (fold_dir / layout.RECIPE).is_file():  # killed mid-way: from its checkpoint, or from step 0 without one
        train(resume=fold_dir, tracking=tracking)
    else:
        train(fold_recipe(recipe, train_file, valid_file, data.task), out=fold_dir, tracking=tracking)


def _fold_sizes(data: CVData, k: int) -> tuple[int, int]:
    held = int((data.folds == k).sum())
    return len(data.folds) - held, held


def _write_fold_data(fold_dir: Path, data: CVData, k: int) -> tuple[Path, Path]:
    """Fold k's training and held-out rows as Parquet (with the row numbers); kept files must hold the same rows."""
    out = []
    for name, rows in (("train", data.folds != k), ("validation", data.folds == k)):
        path = fold_dir / DATA / f"{name}.parquet"
        frame = data.df[rows].reset_index(drop=True)
        if path.is_file():
            kept = pd.read_parquet(path, columns=[FILE_ROW])[FILE_ROW].to_numpy()
            if not np.array_equal(kept, frame[FILE_ROW].to_numpy()):
                raise TextuneError(
                    f"{path}: holds other rows than fold {k} has now: the training data or cv settings changed "
                    f"since this cross-validation started; pick another --out"
                )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                _atomic.write_with(path, lambda p, f=frame: f.to_parquet(p, index=False))
            except (ValueError, TypeError) as exc:  # pyarrow refuses a column of mixed types
                raise TextuneError(f"{data.path}: the rows cannot be written as Parquet ({exc})") from None
        out.append(path)
    return out[0], out[1]


def fold_recipe(recipe: Recipe, train_file: Path, valid_file: Path, task: Task) -> Recipe:
    """Fold k's recipe: its own data files, every label of the whole file (a class missing from a fold's training
    rows must not shift the output columns), no max_rows (the rows are already sampled), no cv section."""
    raw = recipe.to_dict()
    raw["data"].update({"train": str(train_file), "validation": str(valid_file), "max_rows": None})
    labels = getattr(task, "labels", None)
    if labels and not raw["data"].get("labels") and not raw["data"].get("label_columns"):
        raw["data"]["labels"] = list(labels)
    raw["cv"] = {"folds": None, "seed": None, "group": None}
    out = recipe_from_dict(raw, f"{recipe._stem} (fold)")
    out._stem = recipe._stem
    return out


# -- the parent's outputs ----------------------------------------------------------------------------------------
def _fold_outputs(parent: Path, recipe: Recipe, data: CVData) -> tuple[np.ndarray, np.ndarray | None]:
    """Out-of-fold outputs (each row by the fold model that held it out) and the fold ensemble's outputs on
    ``data.test``, both in the parent task's space. One fold model is in memory at a time."""
    task, k_folds = data.task, recipe.cv.folds
    test_df = read_table(recipe.data.test) if recipe.data.test else None
    oof = test_sum = None
    for k in range(k_folds):
        member = Predictor.load(parent / FOLDS / str(k))
        held = data.folds == k
        part = from_space(task, to_space(member.task, member.logits(data.df[held].reset_index(drop=True))))
        if oof is None:
            oof = np.zeros((len(data.df), part.shape[1]), dtype=np.float32)
        oof[held] = part
        if test_df is not None:  # the same combination as Predictor.load(PARENT): equal weights, the task's space
            space = to_space(member.task, member.logits(test_df, recipe.data.test))
            test_sum = space if test_sum is None else test_sum + space
        del member
    test = None if test_sum is None else from_space(task, test_sum / k_folds)
    return oof, test


def _assemble(parent: Path, recipe: Recipe, data: CVData) -> None:
    """Writes the parent's files once every fold is finished; the manifest last."""
    task, k_folds = data.task, recipe.cv.folds
    fold_dirs = [parent / FOLDS / str(k) for k in range(k_folds)]
    oof, test = _fold_outputs(parent, recipe, data)
    # The pooled out-of-fold rows are held out from the model that scored each: the combination is calibrated
    # on them (temperature, thresholds), with the figures cross-fitted, as a run is on its validation rows.
    pooled = task.calibrate(oof, data.targets, seed=recipe.train.seed)
    layout.write_task_state(parent, task.state())
    write_oof_files(parent, recipe, data, oof)
    task.plots(parent / layout.PLOTS, oof, data.targets)
    test_metrics = None
    if test is not None:
        test_df = read_table(recipe.data.test)
        if task.has_targets(test_df):
            test_metrics = task.metrics(test, task.targets(test_df, recipe.data.test, "test"))
        _atomic.write_csv(layout.prediction_path(parent, "test"), prediction_frame(task, test_df, test, recipe.data.id))
    weight = 1.0 / k_folds
    members = [
        {"path": f"{FOLDS}/{k}", "kind": "run", "weight": weight, "manifest_sha256": sha256_file(d / layout.MANIFEST)}
        for k, d in enumerate(fold_dirs)
    ]
    _atomic.write_json(parent / ENSEMBLE, {"kind": "cv", "method": "mean", "predictable": True, "members": members})
    summaries = [layout.read_summary(d) for d in fold_dirs]
    layout.write_summary(parent, _summary(recipe, data, summaries, pooled, test_metrics))
    manifest = layout.read_json(fold_dirs[0] / layout.MANIFEST, layout.MANIFEST)
    write_combined_manifest(
        parent,
        seed=recipe.train.seed,
        data_hashes=data_hashes(recipe),
        device=manifest.get("device", "cpu"),
        precision=manifest.get("precision"),
    )
    from textune.report.html import write_report

    write_report(parent)


def _summary(
    recipe: Recipe, data: CVData, summaries: list[dict], pooled: dict[str, float], test: dict | None
) -> dict[str, Any]:
    task = data.task
    main = recipe.train.early_stopping.metric or task.main_metric
    if main not in task.metric_directions:  # "loss" is the loop's; the pooled OOF metrics do not report it
        main = task.main_metric
    per_fold = [
        {
            "fold": k,
            **{key: s.get(key) for key in ("validation", "best_step", "steps", "train_rows", "validation_rows")},
            "train_seconds": s.get("train_seconds"),
        }
        for k, s in enumerate(summaries)
    ]
    seconds = sum(float(s.get("train_seconds") or 0) for s in summaries)
    return {
        "kind": "cv",
        "task": recipe.task,
        "model": recipe.model.name,
        "main_metric": main,
        "metric_direction": task.direction(main),
        "folds": recipe.cv.folds,
        "cv_seed": data.seed,
        "group": recipe.cv.group,
        "validation": pooled,  # the pooled out-of-fold rows: what compare and the report rank by
        "test": test,  # the fold ensemble on data.test
        "cv": cv_statistics([s.get("validation") or {} for s in summaries], pooled),
        "fold_summaries": per_fold,
        "parameters": summaries[0].get("parameters"),  # one fold model's; prediction runs all of them
        "precision": summaries[0].get("precision"),
        "device": summaries[0].get("device"),
        "train_rows": len(data.df),
        "validation_rows": len(data.df),
        "train_seconds": round(seconds, 3),
        "predict_seconds": round(sum(float(s.get("predict_seconds") or 0) for s in summaries), 3),
        "train_samples_per_s": round(
            sum(float(s.get("train_samples_per_s") or 0) * float(s.get("train_seconds") or 0) for s in summaries)
            / max(seconds, 1e-9),
            2,
        ),
    }
