"""Combining runs: the fold ensemble of a cross-validated run, and ensembles fitted on out-of-fold predictions.

**Blend space.** Members are combined in the task's own space, never on raw logits, so that the task's guarantees
hold for the combination: class probabilities (softmax tasks, preference: they sum to 1, and averaging
already-symmetric preference outputs stays symmetric); sigmoid probabilities per label (multilabel) or per
threshold (CORAL ordinal heads, made monotone first, so levels stay ordered); and for regression the transformed
target ``t(y)`` (each member's standardised output mapped back with its own target statistics, which differ
between folds), back-transformed once by the combined task. A member's calibration (temperature, thresholds) is
not applied: the combination is calibrated as a whole on the out-of-fold rows, as a run is on its validation rows.

**Directories.** A cross-validated run (``kind: cv``, see :mod:`textune.cv`) and a fitted ensemble
(``kind: ensemble``, :func:`fit_ensemble`) share one shape: ``recipe.yaml``, ``task.json`` (the combination's
task state and calibration), ``ensemble.json`` (members, weights, method), ``summary.json``, ``oof.csv`` (the
columns of ``predictions/validation.csv`` plus the row number), ``oof_outputs.csv`` (row, fold, encoded targets
and raw outputs: what ensembles are fitted on) and ``manifest.json`` (checksums). ``Predictor.load`` on such a
directory returns a :class:`FoldEnsemble`, which runs every member with a weight and combines their outputs.

**Fitting.** :func:`fit_ensemble` sees out-of-fold outputs only, never a row a member trained on: members must hold
the same rows in the same folds, and a cross-validated member whose fold models trained on rows they are credited
with predicting out of fold is refused. ``greedy`` is ensemble selection with replacement (Caruana et al. 2004, as
AutoGluon fits its weighted ensembles); ``stack`` fits one non-negative weight per member (and an intercept for
regression) with the task's own loss. The score reported for the ensemble is cross-fitted over the folds (the
weights applied to each fold were fitted on the other folds), with the in-sample figure beside it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from textune import _atomic
from textune._math import cv_statistics, logit, sigmoid, softmax
from textune.data.io import require_columns, sha256_file
from textune.errors import TextuneError
from textune.recipe import Recipe, recipe_from_dict
from textune.report.html import write_report
from textune.run import RUN_FORMAT, layout, write_manifest
from textune.tasks import Task, get_task

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble.json"
OOF_CSV = "oof.csv"
OOF_OUTPUTS = "oof_outputs.csv"
FOLDS = "folds"
# Hidden column of a fold's data files: the row's 0-based position in the training file, so that out-of-fold
# predictions map back to the file's rows (and an ensemble can check which rows a fold model trained on).
FILE_ROW = "__textune_row__"
ROW = "row"  # the same number in oof.csv and oof_outputs.csv
FOLD = "fold"
COMBINED_KINDS = ("cv", "ensemble")
METHODS = ("greedy", "stack")
ROUNDS = 25  # ensemble selection rounds (AutoGluon's default ensemble size is 25 too)
STACK_L2 = 1e-3  # ridge penalty on the stacker's weights: keeps them finite when members are near-duplicates


# -- the blend space ---------------------------------------------------------------------------------------------
def _standardisation(task: Task) -> tuple[float, float]:
    """(shift, scale) from a values task's raw outputs to its transformed target: a task whose state holds a
    target mean and std (regression) learns ``(t(y) - mean) / std`` with statistics of its own training rows."""
    state = task.state()
    return float(state.get("mean", 0.0)), float(state.get("std", 1.0) or 1.0)


def to_space(task: Task, outputs: np.ndarray) -> np.ndarray:
    """A member's raw outputs in the space members are averaged in (see the module docstring), float64."""
    z = np.asarray(outputs, dtype=np.float64)
    kind = task.baseline_outputs()
    if kind == "classes":
        return softmax(z)
    if kind == "cumulative":  # P(level > k), made non-increasing in k so the level probabilities stay >= 0
        return np.minimum.accumulate(sigmoid(z), axis=1)
    if kind == "per_label":
        return sigmoid(z)
    shift, scale = _standardisation(task)
    return z * scale + shift


def from_space(task: Task, values: np.ndarray) -> np.ndarray:
    """Raw outputs of ``task`` that map back to ``values`` (the inverse of :func:`to_space`), float32."""
    kind = task.baseline_outputs()
    if kind == "classes":
        return np.log(np.clip(values, 1e-12, None)).astype(np.float32)
    if kind in ("cumulative", "per_label"):
        return logit(values).astype(np.float32)
    shift, scale = _standardisation(task)
    return ((np.asarray(values, dtype=np.float64) - shift) / scale).astype(np.float32)


@dataclass
class Blend:
    """How members' outputs become one: ``mean``/``greedy`` average the members' blend-space outputs with these
    weights; ``stack`` sums their raw outputs (in the combined task's space) times the weights, plus ``bias``."""

    method: str
    weights: np.ndarray
    bias: float = 0.0

    def combine(self, task: Task, spaces: list[np.ndarray | None]) -> np.ndarray:
        """Raw outputs of ``task`` from the members' blend-space outputs (None for a member without weight)."""
        w = np.asarray(self.weights, dtype=np.float64)
        used = [i for i, s in enumerate(spaces) if w[i] > 0 and s is not None]
        if not used:
            raise TextuneError("ensemble: no member has a weight above 0")
        if self.method == "stack":
            z = sum(w[i] * from_space(task, spaces[i]).astype(np.float64) for i in used) + self.bias
            return np.asarray(z, dtype=np.float32)
        return from_space(task, sum(w[i] * spaces[i] for i in used) / w[used].sum())


# -- out-of-fold files -------------------------------------------------------------------------------------------
@dataclass
class OOF:
    """Out-of-fold outputs of a directory, one row per training row in file order."""

    rows: np.ndarray  # 0-based position in the training file
    folds: np.ndarray  # the fold that held the row out
    targets: np.ndarray  # encoded as the task encodes them
    outputs: np.ndarray  # raw outputs in the directory's own task space (its task.json)


def write_oof(run_dir: Path, oof: OOF) -> Path:
    frame = pd.DataFrame({ROW: np.asarray(oof.rows, dtype=np.int64), FOLD: np.asarray(oof.folds, dtype=np.int64)})
    targets = np.asarray(oof.targets)
    if targets.ndim == 1:
        frame["target"] = targets
    else:
        for j in range(targets.shape[1]):
            frame[f"target_{j}"] = targets[:, j]
    outputs = np.asarray(oof.outputs, dtype=np.float64).reshape(len(frame), -1)
    for j in range(outputs.shape[1]):
        frame[f"output_{j}"] = outputs[:, j]
    return _atomic.write_csv(Path(run_dir) / OOF_OUTPUTS, frame)


def read_oof(run_dir: Path) -> OOF:
    """Raises: TextuneError: the directory has no (readable) out-of-fold outputs."""
    path = Path(run_dir) / OOF_OUTPUTS
    if not path.is_file():
        raise TextuneError(
            f"{run_dir}: has no out-of-fold predictions ({OOF_OUTPUTS}); ensembles are fitted on cross-validated "
            f"runs (textune train --folds K), cross-validated baselines (textune baseline --folds K) and ensembles"
        )
    try:
        frame = pd.read_csv(path)
        target_cols = [c for c in frame.columns if c == "target" or c.startswith("target_")]
        output_cols = [c for c in frame.columns if c.startswith("output_")]
        targets = frame[target_cols].to_numpy(dtype=np.float64)
        rows, folds = frame[ROW].to_numpy(dtype=np.int64), frame[FOLD].to_numpy(dtype=np.int64)
    except (ValueError, KeyError, pd.errors.ParserError):
        raise TextuneError(f"{path}: unreadable; the directory is corrupted") from None
    if not target_cols or not output_cols:
        raise TextuneError(f"{path}: has no target or output columns; the directory is corrupted")
    if len(target_cols) == 1:
        targets = targets[:, 0]
        if np.all(targets == np.round(targets)):  # class indices (a regression target may be whole too: harmless)
            targets = targets.astype(np.int64)
    return OOF(rows, folds, targets, frame[output_cols].to_numpy(dtype=np.float64))


# -- the combined predictor --------------------------------------------------------------------------------------
def summary_kind(path: str | Path) -> str | None:
    """``summary.json``'s kind (``cv``, ``ensemble``, ``baseline``), None for a run or a directory without one."""
    p = Path(path) / layout.SUMMARY
    try:
        summary = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return summary.get("kind") if isinstance(summary, dict) else None


def is_combined_dir(path: str | Path) -> bool:
    """A cross-validated run or a fitted ensemble: what :func:`load_combined` loads."""
    return summary_kind(path) in COMBINED_KINDS


class FoldEnsemble:
    """Member predictors combined in the task's space, then the task's predictions: the folds of a
    cross-validated run (equal weights) or the members of a fitted ensemble (its weights).

    :func:`load_combined` builds this class on top of the Predictor class it is given (``predict`` imports this
    module to dispatch, so importing ``predict`` here would close an import circle); every Predictor method
    (``predict``, ``predict_proba``, ``evaluate``, ``submission``, ``predict_file``, ``texts_of``) then works
    unchanged on :meth:`logits`, and the object is an instance of that Predictor class.
    """

    model = None
    tokenizer = None

    def __init__(self, run_dir: Path, recipe: Recipe, task: Task, members: list, blend: Blend):
        self.run_dir, self.recipe, self.task = Path(run_dir), recipe, task
        self.members, self.blend = members, blend
        self.device, self.precision = members[0].device, members[0].precision
        # the first member reading tabular features stands for the ensemble (what `serve` asks about)
        self.featurizer = next((m.featurizer for m in members if getattr(m, "featurizer", None) is not None), None)

    @property
    def weights(self) -> np.ndarray:
        return np.asarray(self.blend.weights, dtype=np.float64)

    def logits(self, data, source: str = "input") -> np.ndarray:
        """Each member's outputs on the rows, combined: one output row per input row, in input order."""
        spaces = [to_space(m.task, m.logits(data, source)) for m in self.members]
        return self.blend.combine(self.task, spaces)

    def outputs(self, encoded, extras=None) -> np.ndarray:
        raise TextuneError(
            f"{self.run_dir}: an ensemble predicts from rows (logits, predict, submission), not from encoded rows: "
            f"its members tokenize and featurize on their own"
        )

    def read_input(self, path: str | Path) -> pd.DataFrame:
        """The file to predict, with the columns of every member (members may read different templates)."""
        df = super().read_input(path)  # type: ignore[misc]  (the Predictor's own checks: columns, unique ids)
        for member in self.members:
            for col, key in member.task.input_columns().items():
                require_columns(df, [col], path, f"member {member.run_dir}'s {key}")
        return df


_CLASSES: dict[type, type] = {}


def combined_class(base: type) -> type:
    """:class:`FoldEnsemble` on top of ``base`` (``textune.predict.Predictor``), made once per base."""
    if base not in _CLASSES:
        _CLASSES[base] = type("FoldEnsemble", (FoldEnsemble, base), {"__doc__": FoldEnsemble.__doc__})
    return _CLASSES[base]


def _verified_spec(run_dir: Path) -> dict:
    """``ensemble.json``, after checking the directory is complete, not from a newer textune and not altered."""
    manifest_path = run_dir / layout.MANIFEST
    if not manifest_path.is_file():
        raise TextuneError(f"{run_dir}: incomplete ({layout.MANIFEST} missing); run the command that wrote it again")
    manifest = layout.read_json(manifest_path, layout.MANIFEST)
    recorded = manifest.get("files_sha256") if isinstance(manifest, dict) else None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(recorded, dict) or not isinstance(fmt, int):
        raise TextuneError(f"{manifest_path}: malformed; the directory is corrupted")
    if fmt > RUN_FORMAT:
        raise TextuneError(f"{run_dir}: written by a newer textune (format {fmt}); upgrade textune")
    for need in (ENSEMBLE, layout.RECIPE, layout.TASK_STATE):
        if need not in recorded:
            raise TextuneError(f"{manifest_path}: has no checksum for {need}; the directory is corrupted")
    for rel, digest in recorded.items():
        p = run_dir / str(rel)
        if run_dir.resolve() not in p.resolve().parents:
            raise TextuneError(f"{manifest_path}: lists {rel!r} outside the directory; it was altered")
        if not p.is_file() or sha256_file(p) != digest:
            raise TextuneError(f"{run_dir}: {rel} is missing or altered since it was written (checksum mismatch)")
    spec = layout.read_json(run_dir / ENSEMBLE, ENSEMBLE)
    if not isinstance(spec, dict) or not isinstance(spec.get("members"), list) or not spec["members"]:
        raise TextuneError(f"{run_dir}/{ENSEMBLE}: malformed; the directory is corrupted")
    return spec


def member_path(run_dir: Path, path: str) -> Path:
    """A member's directory: relative paths (a CV run's folds) are read against the combined directory."""
    p = Path(path)
    return p if p.is_absolute() else Path(run_dir) / p


def load_task(run_dir: Path, recipe: Recipe) -> Task:
    task = get_task(recipe.task)(recipe)
    try:
        task.load_state(layout.read_task_state(run_dir))
    except (KeyError, TypeError, ValueError):
        raise TextuneError(f"{run_dir}: the task state is malformed; the directory is corrupted") from None
    return task


def load_combined(run_dir: str | Path, base: type, device: str | None = None, precision: str | None = None):
    """Loads a cross-validated run or a fitted ensemble as a :class:`FoldEnsemble` over ``base`` predictors.

    Args:
        run_dir: the combined directory.
        base: the Predictor class; each member is loaded with ``base.load`` (a member may itself be combined).
        device, precision: passed to every member.

    Raises:
        TextuneError: an incomplete or altered directory, a report-only ensemble (baseline members), or a
            member that cannot be loaded.
    """
    run_dir = Path(run_dir)
    # called through a FoldEnsemble class, ``base`` is that class: its members are plain Predictors all the same
    base = next(c for c in base.__mro__ if not issubclass(c, FoldEnsemble))
    spec = _verified_spec(run_dir)
    if not spec.get("predictable", True):
        unable = [m["path"] for m in spec["members"] if not m.get("predictable", True) and m.get("weight", 0) > 0]
        raise TextuneError(
            f"{run_dir}: a report-only ensemble: member(s) {', '.join(unable)} are baselines (scores, no saved "
            f"model), so it cannot predict new rows; fit the ensemble on cross-validated runs only to predict"
        )
    recipe = recipe_from_dict(layout.read_recipe_raw(run_dir), str(run_dir / layout.RECIPE))
    task = load_task(run_dir, recipe)
    members, weights = [], []
    for m in spec["members"]:
        if float(m.get("weight", 0)) > 0:
            path = member_path(run_dir, m["path"])
            if not (path / layout.MANIFEST).is_file():
                raise TextuneError(
                    f"{run_dir}: member {path} is gone or incomplete (members are kept by path); put it back or fit "
                    f"the ensemble again"
                )
            if m.get("manifest_sha256") and sha256_file(path / layout.MANIFEST) != m["manifest_sha256"]:
                raise TextuneError(
                    f"{run_dir}: member {path} has changed since the weights were fitted (its manifest differs); "
                    f"fit the ensemble again"
                )
            members.append(base.load(path, device=device, precision=precision))
            weights.append(float(m["weight"]))
    blend = Blend(spec.get("method", "mean"), np.asarray(weights), float(spec.get("bias", 0.0)))
    return combined_class(base)(run_dir, recipe, task, members, blend)


def write_combined_manifest(run_dir: Path, *, seed: int, data_hashes: dict[str, str], device: str, precision) -> None:
    """The run manifest, with ``ensemble.json``'s checksum added: loading refuses an altered weight or member."""
    write_manifest(run_dir, seed=seed, data_hashes=data_hashes, device=device, precision=precision)
    manifest = layout.read_json(run_dir / layout.MANIFEST, layout.MANIFEST)
    manifest["files_sha256"][ENSEMBLE] = sha256_file(run_dir / ENSEMBLE)
    _atomic.write_json(run_dir / layout.MANIFEST, manifest)


def fresh_task(recipe: Recipe, state: dict) -> Task:
    """A task with ``state`` (labels, target statistics) but no calibration: a combination calibrates anew."""
    task = get_task(recipe.task)(recipe)
    fresh = task.calibration_state()
    task.load_state(state)
    task.set_calibration_state(fresh)
    return task


# -- fitting -----------------------------------------------------------------------------------------------------
def greedy_selection(
    task: Task, spaces: list[np.ndarray], targets: np.ndarray, metric: str, rounds: int = ROUNDS
) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004): start empty, add the member whose addition gives
    the best ``metric``, ``rounds`` times; the weights are the counts of the best-scoring prefix, over its length.

    Each candidate is scored as the task will report the ensemble: after fitting its calibration (a preference
    temperature, multi-label thresholds) on these rows. Scored raw, an over-confident member that calibration would
    fix (gradient-boosted trees' probabilities) looks worst and is left out.

    Ties go to the member that scores best alone, then to the first one given.
    """
    sign = 1.0 if task.direction(metric) == "max" else -1.0
    fresh = task.calibration_state()

    def score(values: np.ndarray) -> float:
        outputs = from_space(task, values)
        task.set_calibration_state(fresh)
        task.fit_calibration(outputs, targets)
        value = task.metrics(outputs, targets)[metric]
        task.set_calibration_state(fresh)
        return sign * value if np.isfinite(value) else -np.inf

    alone = [score(s) for s in spaces]
    total = np.zeros_like(spaces[0])
    counts = np.zeros(len(spaces))
    best_score, best_counts = -np.inf, None
    for r in range(1, rounds + 1):
        trial = [score((total + s) / r) for s in spaces]
        pick = max(range(len(spaces)), key=lambda i: (trial[i], alone[i], -i))
        total += spaces[pick]
        counts[pick] += 1
        if best_counts is None or trial[pick] > best_score:  # the earliest prefix wins a tie: fewer picks
            best_score, best_counts = trial[pick], counts.copy()
    return best_counts / best_counts.sum()


def stack_weights(task: Task, spaces: list[np.ndarray], targets: np.ndarray) -> tuple[np.ndarray, float]:
    """One non-negative weight per member (and an intercept for values tasks), minimising the task's own loss on
    the members' outputs plus a small ridge penalty: a logistic regression (per class, threshold or label) or a
    linear regression with coefficients tied across outputs, so the task's guarantees hold (no class-specific
    term that would break preference symmetry; non-negative weights keep cumulative outputs ordered)."""
    import torch
    from scipy.optimize import minimize

    stacked = torch.tensor(np.stack([from_space(task, s) for s in spaces]), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targets))
    with_bias = task.baseline_outputs() == "values"
    m = len(spaces)

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        p = torch.tensor(params, dtype=torch.float64, requires_grad=True)
        z = (p[:m, None, None] * stacked).sum(0) + p[m]
        loss = task.loss(z, y).double() + STACK_L2 * (p[:m] ** 2).sum()
        loss.backward()
        return float(loss.detach()), p.grad.numpy().copy()

    start = np.r_[np.full(m, 1.0 / m), 0.0]
    bounds = [(0.0, None)] * m + [(None, None) if with_bias else (0.0, 0.0)]
    res = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B", bounds=bounds)
    weights = np.maximum(res.x[:m], 0.0)
    if not weights.any():  # every member useless on its own: fall back to the plain mean
        weights = np.full(m, 1.0 / m)
    return weights, float(res.x[m])


def fit_blend(
    task: Task, spaces: list[np.ndarray], targets: np.ndarray, metric: str, method: str, rounds: int = ROUNDS
) -> Blend:
    if method == "stack":
        weights, bias = stack_weights(task, spaces, targets)
        return Blend("stack", weights, bias)
    return Blend("greedy", greedy_selection(task, spaces, targets, metric, rounds))


def cross_fitted(task: Task, spaces: list[np.ndarray], folds: np.ndarray, fit: Callable[..., Blend]) -> np.ndarray:
    """Outputs where each fold's rows are combined with a blend fitted on the other folds' rows only."""
    out: np.ndarray | None = None
    for k in np.unique(folds):
        held = folds == k
        blend = fit([s[~held] for s in spaces], ~held)
        part = blend.combine(task, [s[held] for s in spaces])
        if out is None:
            out = np.zeros((len(folds), part.shape[1]), dtype=np.float32)
        out[held] = part
    return out


@dataclass
class _Member:
    path: Path
    recipe: Recipe
    task: Task
    summary: dict
    oof: OOF

    @property
    def kind(self) -> str:
        return self.summary.get("kind") or "run"

    @property
    def predictable(self) -> bool:
        if self.kind == "ensemble":
            return bool(self.summary.get("predictable", True))
        return self.kind == "cv"

    @classmethod
    def read(cls, path: str | Path) -> _Member:
        path = Path(path)
        if not path.is_dir():
            raise TextuneError(f"{path}: directory not found")
        summary = layout.read_summary(path)
        if summary.get("kind") not in (*COMBINED_KINDS, "baseline") or not (path / OOF_OUTPUTS).is_file():
            # not a single run's validation rows: they are few, and early stopping already chose the model on them
            raise TextuneError(
                f"{path}: has no out-of-fold predictions ({OOF_OUTPUTS}); ensembles are fitted on cross-validated "
                f"directories only: textune train --folds K, textune baseline --folds K, or another ensemble"
            )
        recipe = recipe_from_dict(layout.read_recipe_raw(path), str(path / layout.RECIPE))
        return cls(path, recipe, load_task(path, recipe), summary, read_oof(path))


def _check_members(members: list[_Member]) -> None:
    """Same task, labels, rows, folds and targets; cross-validated members truly out of fold."""
    first = members[0]
    seen: set[Path] = set()
    for m in members:
        where = m.path.resolve()
        if where in seen:
            raise TextuneError(f"{m.path}: given twice; list each member once")
        seen.add(where)
        if m.recipe.task != first.recipe.task or getattr(m.task, "labels", None) != getattr(first.task, "labels", None):
            raise TextuneError(
                f"{m.path}: task {m.recipe.task} with labels {getattr(m.task, 'labels', None)} differs from "
                f"{first.path} ({first.recipe.task}, {getattr(first.task, 'labels', None)}); ensemble runs of one task"
            )
        same_rows = np.array_equal(m.oof.rows, first.oof.rows)
        if not same_rows or not np.array_equal(m.oof.folds, first.oof.folds):
            what = "rows" if not same_rows else "fold assignment"
            raise TextuneError(
                f"{m.path}: its out-of-fold {what} differs from {first.path}'s; members must be cross-validated on "
                f"the same data with the same cv.folds, cv.seed and cv.group"
            )
        if m.oof.targets.shape != first.oof.targets.shape or not np.allclose(m.oof.targets, first.oof.targets):
            raise TextuneError(f"{m.path}: its targets differ from {first.path}'s; members must read the same labels")
        if m.kind == "cv":
            check_out_of_fold(m.path, m.oof)


def check_out_of_fold(path: Path, oof: OOF) -> None:
    """Refuses a cross-validated directory whose fold models trained on rows they are credited with holding out.

    Raises:
        TextuneError: a fold's training rows include one of its out-of-fold rows, or cannot be read.
    """
    for k in np.unique(oof.folds):
        fold_dir = path / FOLDS / str(k)
        try:
            train_file = layout.read_recipe_raw(fold_dir)["data"]["train"]
            trained = pd.read_parquet(train_file, columns=[FILE_ROW])[FILE_ROW].to_numpy()
        except (TextuneError, KeyError, TypeError, OSError, ValueError):
            raise TextuneError(
                f"{path}: cannot read which rows fold {k} trained on ({fold_dir}); the directory is incomplete"
            ) from None
        overlap = np.intersect1d(oof.rows[oof.folds == k], trained)
        if len(overlap):
            raise TextuneError(
                f"{path}: {len(overlap)} out-of-fold prediction(s) of fold {k} come from a model trained on those "
                f"rows (e.g. row {int(overlap[0])}): in-sample predictions would earn weight they do not deserve"
            )


def fit_ensemble(
    dirs: list[str | Path],
    out: str | Path,
    *,
    method: str = "greedy",
    rounds: int = ROUNDS,
    metric: str | None = None,
) -> Path:
    """Fits an ensemble of cross-validated directories on their out-of-fold predictions and writes it.

    Args:
        dirs: CV runs (``textune train --folds K``), CV baselines (``textune baseline --folds K``) or ensembles.
        out: the ensemble directory (replaced if it holds an ensemble; refused if it holds anything else).
        method: ``greedy`` (ensemble selection) or ``stack`` (one non-negative weight per member by the task's loss).
        rounds: greedy selection rounds.
        metric: the metric greedy selection optimises; default the first member's main metric.

    Returns:
        The ensemble directory. It predicts through ``Predictor.load`` unless a member with weight is a baseline
        (no saved model): then it is written as report-only (``"predictable": false``) and loading refuses it.

    Raises:
        TextuneError: fewer than one member, members of different tasks, rows, folds or targets, a member without
            out-of-fold predictions, or one whose out-of-fold predictions are in-sample.
    """
    if method not in METHODS:
        raise TextuneError(f"--method: unknown method '{method}'; choose {' or '.join(METHODS)}")
    if rounds < 1:
        raise TextuneError(f"--rounds: {rounds}; give 1 or more")
    if not dirs:
        raise TextuneError("ensemble: give at least one member directory")
    members = [_Member.read(d) for d in dirs]
    _check_members(members)
    first = members[0]
    task = fresh_task(first.recipe, first.task.state())
    metric = metric or first.summary.get("main_metric") or task.main_metric
    if metric not in task.metric_directions:  # e.g. "loss": the loop's own, which the task's metrics do not report
        if metric == (first.summary.get("main_metric")):
            metric = task.main_metric
        else:
            task.direction(metric, "--metric")  # unknown: one line with the choices
            raise TextuneError(f"--metric: '{metric}' is not scored on out-of-fold outputs; choose {task.main_metric}")
    spaces = [to_space(m.task, m.oof.outputs) for m in members]
    targets, folds = first.oof.targets, first.oof.folds

    def fit(parts: list[np.ndarray], rows: np.ndarray) -> Blend:
        return fit_blend(task, parts, targets[rows], metric, method, rounds)

    blend = fit(spaces, np.ones(len(targets), dtype=bool))
    crossed = cross_fitted(task, spaces, folds, fit)
    final = blend.combine(task, spaces)
    fresh = task.calibration_state()
    honest = task.calibrate(crossed, targets, seed=first.recipe.train.seed)
    per_fold = []  # each fold scored as a fold run scores its own held-out rows: mean and spread beside the members'
    for k in np.unique(folds):
        task.set_calibration_state(fresh)
        per_fold.append(task.calibrate(crossed[folds == k], targets[folds == k], seed=first.recipe.train.seed))
    task.set_calibration_state(fresh)
    in_sample = task.calibrate(final, targets, seed=first.recipe.train.seed)  # the calibration prediction uses
    scores = {"validation": honest, "in_sample": in_sample, "rounds": rounds if method == "greedy" else None}
    scores["cv"] = cv_statistics(per_fold, honest)
    oof = OOF(first.oof.rows, folds, targets, crossed)  # cross-fitted: an ensemble of ensembles stays honest
    return _write_ensemble(Path(out), members, task, blend, oof, metric, scores)


def _write_ensemble(
    out: Path, members: list[_Member], task: Task, blend: Blend, oof: OOF, metric: str, scores: dict
) -> Path:
    """Writes everything into a temporary sibling, then swaps it in: a reader never sees half an ensemble."""
    if out.exists() and any(out.iterdir()) and summary_kind(out) != "ensemble":
        raise TextuneError(f"{out}: exists and is not a textune ensemble; pick another --out so it is not overwritten")
    first = members[0]
    weights = np.asarray(blend.weights, dtype=np.float64)
    predictable = all(m.predictable for m, w in zip(members, weights, strict=True) if w > 0)
    listed = [
        {
            "path": str(m.path.resolve()),
            "kind": m.kind,
            "weight": float(w),
            "predictable": m.predictable,
            "cv_score": (m.summary.get("validation") or {}).get(metric),
            "manifest_sha256": sha256_file(m.path / layout.MANIFEST),
        }
        for m, w in zip(members, weights, strict=True)
    ]
    spec = {"kind": "ensemble", "method": blend.method, "bias": float(blend.bias), "metric": metric}
    spec |= {"predictable": predictable, "members": listed}
    summary = {
        "kind": "ensemble",
        "task": first.recipe.task,
        "model": f"ensemble of {int((weights > 0).sum())} ({blend.method})",
        "method": blend.method,
        "main_metric": metric,
        "metric_direction": task.direction(metric),
        "predictable": predictable,
        "validation": scores["validation"],  # weights and calibration cross-fitted over the folds
        "validation_in_sample": scores["in_sample"],  # the final weights, fitted on these same rows
        "cv": scores["cv"],  # per fold of the cross-fitted outputs: mean, std and the pooled value
        "members": [{k: m[k] for k in ("path", "kind", "weight", "cv_score")} for m in listed],
        "rounds": scores["rounds"],
        "train_rows": len(oof.rows),
        "validation_rows": len(oof.rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _atomic.write_text(tmp / layout.RECIPE, (first.path / layout.RECIPE).read_text(encoding="utf-8"))
        layout.write_task_state(tmp, task.state())
        _atomic.write_json(tmp / ENSEMBLE, spec)
        write_oof(tmp, oof)
        _atomic.write_csv(tmp / OOF_CSV, _oof_table(first.path, task, oof.outputs))
        layout.write_summary(tmp, summary)
        precision = layout.read_json(first.path / layout.MANIFEST, layout.MANIFEST).get("precision")
        write_combined_manifest(tmp, seed=first.recipe.train.seed, data_hashes={}, device="cpu", precision=precision)
        write_report(tmp, name=out.name)
        _atomic.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _oof_table(member_dir: Path, task: Task, outputs: np.ndarray) -> pd.DataFrame:
    """oof.csv: a member's row, id and target columns, then this combination's ``pred_*`` and ``proba_*`` columns
    (the columns ``predict.prediction_frame`` writes; that module imports this one, so it is not called here)."""
    frame = pd.read_csv(member_dir / OOF_CSV, dtype=str, keep_default_na=False)
    keep = [c for c in frame.columns if not c.startswith(("pred_", "proba_"))]
    preds = task.predictions(outputs)
    probs = task.predictions(outputs, proba=True)
    parts = [frame[keep], preds.add_prefix("pred_")]
    if list(probs.columns) != list(preds.columns):  # regression has no probabilities
        parts.append(probs.add_prefix("proba_"))
    return pd.concat(parts, axis=1)
