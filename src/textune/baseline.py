"""Quick references on the recipe's own split: TF-IDF + linear model, and frozen embeddings + linear model.

``textune baseline recipe.yaml`` answers "how much does fine-tuning buy over the cheap options?". Each baseline
reads the data through :func:`textune.prepare.prepare`, so its train/validation rows are exactly the
fine-tune's (same seed, same stratified split), and scores validation (and a labelled test file) with the task's
own metrics. scikit-learn does the modelling:

* ``tfidf``: word 1-2-grams and character 2-5-grams (within word boundaries), sublinear TF-IDF, then logistic
  regression (classification) or ridge regression (numeric targets).
* ``embedding``: mean-pooled, L2-normalised embeddings from a frozen encoder (default: the recipe's model), then
  the same linear model.
* ``gbdt`` (asked for by name): gradient-boosted trees (scikit-learn's HistGradientBoosting) on the recipe's tabular
  features plus text statistics (``textune.features.Featurizer`` with ``text_stats`` on).

With ``folds=K`` (or the recipe's ``cv.folds``) each baseline is cross-validated on the folds a ``train --folds K``
run uses (:func:`textune.cv.assign_folds`, same seed and groups): every training row is scored by the model fitted
on the other folds, the directory gets ``oof.csv`` / ``oof_outputs.csv`` (what :func:`textune.ensemble.fit_ensemble`
reads) and its summary the mean and spread over folds beside the pooled out-of-fold figure.

Each result is a directory shaped like a training run (``summary.json`` with ``"kind": "baseline"``, predictions,
plots, ``report.html``, ``manifest.json``) so that ``textune compare`` lists runs and baselines alike. The fitted
scikit-learn models are not saved: a baseline is a number to beat, not a model to deploy (and saving it would
mean pickles, which textune refuses to read).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textune import _atomic
from textune._math import logit
from textune.errors import TextuneError
from textune.prepare import Split, data_hashes, prepare
from textune.recipe import Recipe, dump_recipe
from textune.run import layout
from textune.tasks import Task, get_task

log = logging.getLogger(__name__)

KINDS = ("tfidf", "embedding")  # what `textune baseline` runs when no --kind is given
ALL_KINDS = (*KINDS, "gbdt")
# Inverse regularisation of the logistic regression. On AG News (12k rows) validation accuracy moved by less
# than 0.2 points between C=1 and C=30 for TF-IDF; 10 also suits unit-norm embeddings, whose small feature
# values need weak regularisation.
LOGREG_C = 10.0
RIDGE_ALPHA = 1.0
# Log-probability given to a class the model never saw in train (listed in data.labels only): ~1e-22.
UNSEEN_LOG_PROBA = -50.0


@dataclass
class _Features:
    """A fitted featurizer's output for every split, with its cost."""

    by_split: dict[str, Any]
    short: str  # for the leaderboard's model column
    description: str
    n_features: int
    frozen_parameters: int
    fit_seconds: float  # featurizing train (fitting the vectorizer / running the encoder)
    apply_seconds: float  # featurizing the other splits
    device: str
    categorical: np.ndarray | None = None  # which columns hold category codes (trees split on them as categories)


def _tfidf_features(splits: dict[str, Split], recipe: Recipe) -> _Features:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    # Character n-grams catch morphology, misspellings and names the word vocabulary splits or misses. min_df=2
    # and the caps drop one-off n-grams: on AG News (12k rows) that halved the fit time at the same accuracy.
    # Small files keep min_df=1, where a useful n-gram may well occur only once.
    min_df = 2 if len(splits["train"].texts) >= 1000 else 1
    union = FeatureUnion(
        [
            (
                "word",
                TfidfVectorizer(
                    ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode", max_features=100_000, min_df=min_df
                ),
            ),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=(2, 5),
                    sublinear_tf=True,
                    strip_accents="unicode",
                    max_features=100_000,
                    min_df=min_df,
                ),
            ),
        ]
    )
    t0 = time.perf_counter()
    try:
        train = union.fit_transform(splits["train"].texts)
    except ValueError as exc:  # "empty vocabulary": every training text is blank
        raise TextuneError(f"{splits['train'].path}: no words to build TF-IDF features from ({exc})") from None
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    by_split = {"train": train} | {n: union.transform(s.texts) for n, s in splits.items() if n != "train"}
    return _Features(
        by_split,
        "TF-IDF",
        "TF-IDF (word 1-2 + char 2-5 grams)",
        int(train.shape[1]),
        0,
        fit_s,
        time.perf_counter() - t0,
        "cpu",
    )


def _embedding_features(splits: dict[str, Split], recipe: Recipe, model: str | None) -> _Features:
    from textune.embed import embed_texts, load_encoder

    name = model or recipe.model.name
    encoder = load_encoder(
        name, allow_network=recipe.model.allow_network, trust_remote_code=recipe.model.trust_remote_code
    )
    kwargs = {
        "pooling": "mean",
        "normalize": True,
        "max_length": recipe.data.max_length,
        "batch_size": recipe.train.eval_batch_size,
        "progress": recipe.train.progress,
    }
    t0 = time.perf_counter()
    train = embed_texts(encoder, splits["train"].texts, **kwargs)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    by_split = {"train": train} | {
        n: embed_texts(encoder, s.texts, **kwargs) for n, s in splits.items() if n != "train"
    }
    return _Features(
        by_split,
        f"{name} (frozen)",
        f"{name} embeddings (frozen, mean-pooled, L2-normalised)",
        encoder.dim,
        encoder.num_parameters,
        fit_s,
        time.perf_counter() - t0,
        str(encoder.device),
    )


def _gbdt_features(splits: dict[str, Split], recipe: Recipe) -> _Features:
    """The recipe's tabular features (numeric standardised with missing indicators, categories as codes, frozen
    embeddings if it has any) plus text statistics, fitted on train."""
    from textune.features import TEXT_STATS, Featurizer

    featurizer = Featurizer(recipe.features.model_copy(update={"text_stats": True}))
    train = splits["train"]
    t0 = time.perf_counter()
    featurizer.fit(train.df, train.texts, train.path)

    task = get_task(recipe.task)(recipe)

    def table(split: Split) -> np.ndarray:
        numeric, categorical = featurizer.transform(split.df, split.texts, split.path)
        return np.concatenate([numeric, *_field_statistics(task, split), categorical.astype(np.float32)], axis=1)

    by_split = {"train": table(train)}
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    by_split |= {n: table(s) for n, s in splits.items() if n != "train"}
    n_numeric = int(by_split["train"].shape[1]) - len(featurizer.cardinalities)
    # HistGradientBoosting takes categories below its 255 bins; a larger vocabulary is split on as ordered codes
    mask = np.r_[np.zeros(n_numeric, dtype=bool), np.asarray([c <= 255 for c in featurizer.cardinalities], bool)]
    stats = {f"text_{n}" for n in TEXT_STATS}
    own = [n for n in (*featurizer.state["numeric_names"], *featurizer.state["categorical_names"]) if n not in stats]
    described = f"features ({', '.join(own)}) + text statistics" if own else "text statistics"
    if task.compared_fields:
        described += " per field, and their differences between compared fields"
    return _Features(
        by_split,
        "features" if own else "text statistics",
        described,
        int(by_split["train"].shape[1]),
        0,
        fit_s,
        time.perf_counter() - t0,
        "cpu",
        categorical=mask if mask.any() else None,
    )


def _field_statistics(task: Task, split: Split) -> list[np.ndarray]:
    """Where a row has several text fields (a pair, preference's prompt / a / b): each field's text statistics, and
    the first minus the second of each pair the task compares. Nothing for single-text tasks (the featurizer's
    statistics of the whole text cover them)."""
    from textune.features import text_stats

    fields = task.fields(split.df, split.path)
    if len(fields) < 2:
        return []
    stats = [np.asarray([text_stats(t) for t in field], dtype=np.float32).reshape(len(field), -1) for field in fields]
    return stats + [stats[i] - stats[j] for i, j in task.compared_fields]


FEATURIZERS: dict[str, Callable[..., _Features]] = {
    "tfidf": lambda splits, recipe, model: _tfidf_features(splits, recipe),
    "embedding": _embedding_features,
    "gbdt": lambda splits, recipe, model: _gbdt_features(splits, recipe),
}


class _Linear:
    """The linear model matching the task's targets, returning scores in the shape ``task.metrics`` expects:
    log-probabilities for classes (softmax of them gives the probabilities back), cumulative logits for an
    ordinal CORAL head, logits for multi-label, the task's raw output space for regression."""

    def __init__(self, task: Task, targets: np.ndarray, seed: int):
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.multiclass import OneVsRestClassifier

        self.task = task
        self.k = task.num_outputs
        logreg = f"logistic regression (C={LOGREG_C:g})"
        self.kind = task.baseline_outputs()
        labels = getattr(task, "labels", None) or []
        expected = {"classes": self.k, "cumulative": self.k + 1}.get(self.kind)
        if expected is not None and len(labels) != expected:  # the head does not match the label set
            raise TextuneError(
                f"baseline: task '{task.name}' has {self.k} outputs for {len(labels)} labels; it has no linear "
                f"baseline yet; use textune train"
            )
        if self.kind in ("classes", "cumulative"):
            self.model = LogisticRegression(C=LOGREG_C, max_iter=2000, random_state=seed)
            self.short = "logreg"
            self.description = logreg if self.kind == "classes" else f"{logreg}, as cumulative logits"
        elif self.kind == "per_label":
            self.model = OneVsRestClassifier(LogisticRegression(C=LOGREG_C, max_iter=2000, random_state=seed))
            self.short, self.description = "logreg", f"one-vs-rest {logreg}"
        elif self.kind == "values":
            self.model = Ridge(alpha=RIDGE_ALPHA, random_state=seed)
            self.short, self.description = "ridge", f"ridge regression (alpha={RIDGE_ALPHA:g})"
        else:
            raise TextuneError(f"baseline: task '{task.name}' has no linear baseline yet; use textune train")

    def fit(self, X, y: np.ndarray) -> None:
        from threadpoolctl import threadpool_limits

        if self.kind == "values":
            y = np.asarray(self.task.to_outputs(y), dtype=np.float64)
        # One BLAS thread: the solvers' work is sparse or small, and BLAS threads competing with torch's
        # OpenMP pool made a 200-row fit take 7 s instead of 0.2 s on a 2-core machine.
        with threadpool_limits(limits=1, user_api="blas"):
            self.model.fit(X, y)

    def _log_proba(self, X) -> np.ndarray:
        n_classes = self.k + 1 if self.kind == "cumulative" else self.k
        out = np.full((X.shape[0], n_classes), UNSEEN_LOG_PROBA, dtype=np.float64)
        if hasattr(self.model, "predict_log_proba"):
            out[:, self.model.classes_] = self.model.predict_log_proba(X)
        else:  # gradient-boosted trees give probabilities only
            out[:, self.model.classes_] = np.log(np.clip(self.model.predict_proba(X), 1e-300, None))
        return out

    def scores(self, X) -> np.ndarray:
        if self.kind == "classes":
            return self._log_proba(X)
        if self.kind == "cumulative":
            # P(level > k) for each threshold k, from the class probabilities
            above = 1.0 - np.cumsum(np.exp(self._log_proba(X)), axis=1)[:, :-1]
            return logit(above)
        if self.kind == "per_label":
            return logit(self.model.predict_proba(X))
        return np.asarray(self.model.predict(X), dtype=np.float64).reshape(X.shape[0], self.k)

    @property
    def parameters(self) -> int:
        models = getattr(self.model, "estimators_", [self.model])
        return int(sum(np.size(m.coef_) + np.size(m.intercept_) for m in models))


class _Trees(_Linear):
    """Gradient-boosted trees in place of the linear model, with the same outputs per task."""

    def __init__(self, task: Task, targets: np.ndarray, seed: int, categorical: np.ndarray | None = None):
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from sklearn.multiclass import OneVsRestClassifier

        super().__init__(task, targets, seed)  # checks the task has a baseline; its linear model is replaced
        kwargs = {"random_state": seed, "categorical_features": categorical}
        if self.kind in ("classes", "cumulative"):
            self.model = HistGradientBoostingClassifier(**kwargs)
        elif self.kind == "per_label":
            self.model = OneVsRestClassifier(HistGradientBoostingClassifier(**kwargs))
        else:
            self.model = HistGradientBoostingRegressor(**kwargs)
        self.short = "GBDT"
        self.description = "gradient-boosted trees (HistGradientBoosting)"

    @property
    def parameters(self) -> int:
        # a tree's nodes are its parameters (split feature, threshold, value); sklearn keeps them in _predictors
        models = getattr(self.model, "estimators_", [self.model])
        return int(sum(len(p.nodes) for m in models for it in getattr(m, "_predictors", []) for p in it))


def _model(kind: str, task: Task, targets: np.ndarray, seed: int, feats: _Features) -> _Linear:
    if kind == "gbdt":
        return _Trees(task, targets, seed, feats.categorical)
    return _Linear(task, targets, seed)


def _main_metric(recipe: Recipe, task: Task, metrics: dict[str, float]) -> str:
    # the metric the fine-tune selects on, so that compare ranks both by the same number
    chosen = recipe.train.early_stopping.metric
    return chosen if chosen and chosen in metrics else task.main_metric


def run_baseline(
    recipe: Recipe,
    kind: str,
    *,
    splits: dict[str, Split] | None = None,
    task: Task | None = None,
    out: str | Path | None = None,
    embed_model: str | None = None,
) -> Path:
    """Fits one baseline and writes its run-like directory.

    Args:
        recipe: the validated recipe (its data, split seed and task are used).
        kind: ``tfidf``, ``embedding`` or ``gbdt``.
        splits, task: already loaded splits (to share them between baselines); loaded from the recipe if absent.
        out: parent directory (default ``output.dir``); the baseline goes to ``<out>/<recipe>-baseline-<kind>``.
        embed_model: encoder of the embedding baseline (default: ``model.name``); a run directory works too.

    Returns:
        The baseline directory (replaced if it existed).

    Raises:
        TextuneError: bad data or recipe, an unsupported task, or a destination that is a fine-tuned run.
    """
    _check_kinds([kind])
    dst = Path(out or recipe.output.dir) / f"{recipe._stem}-baseline-{kind}"
    _refuse_non_baseline(dst)
    if task is None or splits is None:
        data = prepare(recipe, tokens=False, features=False)
        task, splits = data.task, data.splits
    task = copy.deepcopy(task)  # calibrated below: the next baseline sharing the task starts uncalibrated
    t_start = time.perf_counter()
    _Linear(task, splits["train"].targets, recipe.train.seed)  # an unsupported task fails before featurizing
    feats = FEATURIZERS[kind](splits, recipe, embed_model)
    linear = _model(kind, task, splits["train"].targets, recipe.train.seed, feats)
    t0 = time.perf_counter()
    linear.fit(feats.by_split["train"], splits["train"].targets)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = {n: linear.scores(X) for n, X in feats.by_split.items() if n != "train"}
    predict_s = time.perf_counter() - t0 + feats.apply_seconds
    results = _score(task, scores, splits, recipe.train.seed)
    train_s = feats.fit_seconds + fit_s
    trainable = linear.parameters
    total = trainable + feats.frozen_parameters
    summary = {
        "kind": "baseline",
        "baseline": kind,
        "task": recipe.task,
        "model": f"{feats.short} + {linear.short}",
        "description": f"{feats.description} + {linear.description}",
        "peft": None,
        "main_metric": (main := _main_metric(recipe, task, results.get("validation", {}))),
        "metric_direction": task.direction(main),
        "validation": results.get("validation"),
        "test": results.get("test"),
        "parameters": {"total": total, "trainable": trainable, "trainable_percent": round(100 * trainable / total, 3)},
        "features": feats.n_features,
        "device": feats.device,
        "train_rows": len(splits["train"].df),
        "validation_rows": len(splits["validation"].df),
        "featurize_seconds": round(feats.fit_seconds + feats.apply_seconds, 3),
        "fit_seconds": round(fit_s, 3),
        "train_seconds": round(train_s, 3),
        "predict_seconds": round(predict_s, 3),
        "wall_seconds": round(time.perf_counter() - t_start, 3),
        "train_samples_per_s": round(len(splits["train"].df) / max(train_s, 1e-9), 2),
    }
    _write_dir(dst, recipe, task, splits, scores, summary)
    return dst


def run_baselines(
    recipe: Recipe,
    kinds: list[str] | tuple[str, ...] = KINDS,
    *,
    out: str | Path | None = None,
    embed_model: str | None = None,
    folds: int | None = None,
) -> list[Path]:
    """Runs each baseline in ``kinds`` on one shared read of the data (see :func:`run_baseline`).

    Args:
        folds: cross-validate each baseline on K folds (default the recipe's ``cv.folds``; 0: the recipe's
            validation split): see :func:`run_cv_baseline`.
    """
    _check_kinds(kinds)
    from textune.cv import load_cv_data, resolve_folds

    k = resolve_folds(recipe, folds)
    if k:
        recipe = recipe.model_copy(deep=True, update={"cv": recipe.cv.model_copy(update={"folds": k})})
        cv_data = load_cv_data(recipe)
        return [
            run_cv_baseline(recipe, kind, cv_data, out=out, embed_model=embed_model) for kind in dict.fromkeys(kinds)
        ]
    data = prepare(recipe, tokens=False, features=False)
    task, splits = data.task, data.splits
    return [
        run_baseline(recipe, kind, splits=splits, task=task, out=out, embed_model=embed_model)
        for kind in dict.fromkeys(kinds)
    ]


def run_cv_baseline(
    recipe: Recipe, kind: str, data, *, out: str | Path | None = None, embed_model: str | None = None
) -> Path:
    """Cross-validates one baseline on ``data``'s folds (:func:`textune.cv.load_cv_data`) and writes its directory,
    ``<out>/<recipe>-baseline-<kind>-cv<K>``: each row scored by the model fitted on the other folds (``oof.csv``,
    ``oof_outputs.csv``, ``predictions/validation.csv``), ``data.test`` by the mean of the fold models.

    A frozen encoder's embeddings do not depend on the fold: they are computed once. TF-IDF vocabularies and
    feature statistics are fitted on each fold's training rows, as are a regression target's mean and spread.

    Raises:
        TextuneError: an unknown kind, an unsupported task, or a destination that is not a baseline.
    """
    from textune._math import cv_statistics
    from textune.cv import write_oof_files
    from textune.ensemble import from_space, to_space

    _check_kinds([kind])
    # calibrated below: the folds (copies of data.task) and the next baseline must start uncalibrated
    task, k_folds = copy.deepcopy(data.task), int(data.folds.max()) + 1
    dst = Path(out or recipe.output.dir) / f"{recipe._stem}-baseline-{kind}-cv{k_folds}"
    _refuse_non_baseline(dst)
    t_start = time.perf_counter()
    splits = {"validation": Split("validation", data.path, data.df, task.texts(data.df, data.path), data.targets)}
    splits |= _test_split(recipe, task)
    # frozen embeddings are the same whatever the fold: computed once
    fixed = None
    if kind == "embedding":
        fixed = FEATURIZERS[kind](_with_test({"train": splits["validation"]}, splits), recipe, embed_model)
    oof = np.zeros((len(data.df), task.num_outputs), dtype=np.float32)
    test_space, fold_metrics, timing = 0.0, [], np.zeros(3)
    for k in range(k_folds):
        held = data.folds == k
        fold_task, model, feats, X, seconds = _fit_fold(kind, recipe, data, held, splits, fixed, embed_model)
        timing += seconds
        scores = model.scores(X["validation"])
        # scored as a fine-tune's fold scores its held-out rows: calibrated (cross-fitted) where the task calibrates
        fold_metrics.append(fold_task.calibrate(scores, data.targets[held], seed=recipe.train.seed))
        oof[held] = from_space(task, to_space(fold_task, scores))  # into the directory's own task space
        if "test" in X:
            test_space = test_space + to_space(fold_task, model.scores(X["test"])) / k_folds
    if fixed is not None:
        timing += [fixed.fit_seconds, 0.0, fixed.apply_seconds]
    scores = {"validation": oof} | ({"test": from_space(task, test_space)} if "test" in splits else {})
    results = _score(task, scores, splits, recipe.train.seed)
    summary = _cv_summary(recipe, kind, data, feats, model, results, fold_metrics, timing, t_start)
    summary["cv"] = cv_statistics(fold_metrics, results["validation"])
    _write_dir(dst, recipe, task, splits, scores, summary, lambda tmp: write_oof_files(tmp, recipe, data, oof))
    return dst


def _score(task: Task, scores: dict[str, np.ndarray], splits: dict[str, Split], seed: int) -> dict[str, dict]:
    """Metrics per split as a fine-tuned run reports them: the task's calibration (a preference temperature,
    multi-label thresholds) fitted on validation and its validation figures cross-fitted; test scored after."""
    results = {}
    if splits["validation"].targets is not None:
        results["validation"] = task.calibrate(scores["validation"], splits["validation"].targets, seed=seed)
    for name, values in scores.items():
        if name != "validation" and splits[name].targets is not None:
            results[name] = task.metrics(values, splits[name].targets)
    return results


def _fit_fold(kind: str, recipe: Recipe, data, held: np.ndarray, splits: dict[str, Split], fixed, embed_model):
    """One fold's task (target statistics from its training rows), features, fitted model and timings."""
    tr = ~held
    fold_task = copy.deepcopy(data.task)
    fold_task.fit_statistics(data.df[tr].reset_index(drop=True), data.path)
    whole = splits["validation"]
    if fixed is not None:
        feats = fixed
        X = {"train": fixed.by_split["train"][tr], "validation": fixed.by_split["train"][held]}
        X |= {n: fixed.by_split[n] for n in fixed.by_split if n == "test"}
    else:
        parts = {"train": _subset(whole, tr, "train"), "validation": _subset(whole, held, "validation")}
        feats = FEATURIZERS[kind](_with_test(parts, splits), recipe, embed_model)
        X = feats.by_split
    model = _model(kind, fold_task, data.targets[tr], recipe.train.seed, feats)
    t0 = time.perf_counter()
    model.fit(X["train"], data.targets[tr])
    fit_s = time.perf_counter() - t0
    if fixed is not None:  # featurized once for every fold: the caller counts it
        return fold_task, model, feats, X, np.asarray([0.0, fit_s, 0.0])
    return fold_task, model, feats, X, np.asarray([feats.fit_seconds, fit_s, feats.apply_seconds])


def _with_test(parts: dict[str, Split], splits: dict[str, Split]) -> dict[str, Split]:
    return parts | {n: s for n, s in splits.items() if n == "test"}


def _subset(split: Split, rows: np.ndarray, name: str) -> Split:
    idx = np.flatnonzero(rows)
    return Split(
        name, split.path, split.df.iloc[idx].reset_index(drop=True), [split.texts[i] for i in idx], split.targets[idx]
    )


def _test_split(recipe: Recipe, task: Task) -> dict[str, Split]:
    """``data.test`` as a split (targets when labelled), or nothing."""
    from textune.data.io import read_table

    path = recipe.data.test
    if not path:
        return {}
    df = read_table(path)
    targets = task.targets(df, path, "test") if task.has_targets(df) else None
    return {"test": Split("test", path, df, task.texts(df, path), targets)}


def _cv_summary(recipe, kind, data, feats, model, results, fold_metrics, timing, t_start) -> dict[str, Any]:
    task, n = data.task, len(data.df)
    trainable = model.parameters
    total = trainable + feats.frozen_parameters
    featurize_s, fit_s, apply_s = (float(x) for x in timing)
    held = np.bincount(data.folds)
    return {
        "kind": "baseline",
        "baseline": kind,
        "task": recipe.task,
        "model": f"{feats.short} + {model.short}",
        "description": f"{feats.description} + {model.description}, {len(held)}-fold cross-validated",
        "peft": None,
        "main_metric": (main := _main_metric(recipe, task, results["validation"])),
        "metric_direction": task.direction(main),
        "folds": len(held),
        "cv_seed": data.seed,
        "group": recipe.cv.group,
        "validation": results["validation"],  # the pooled out-of-fold rows
        "test": results.get("test"),  # the mean of the fold models
        "fold_summaries": [
            {"fold": k, "validation": m, "train_rows": int(n - held[k]), "validation_rows": int(held[k])}
            for k, m in enumerate(fold_metrics)
        ],
        "parameters": {
            "total": total,
            "trainable": trainable,
            "trainable_percent": round(100 * trainable / max(total, 1), 3),
        },
        "features": feats.n_features,
        "device": feats.device,
        "train_rows": n,
        "validation_rows": n,
        "featurize_seconds": round(featurize_s + apply_s, 3),
        "fit_seconds": round(fit_s, 3),
        "train_seconds": round(featurize_s + fit_s, 3),
        "wall_seconds": round(time.perf_counter() - t_start, 3),
        "train_samples_per_s": round(n * (len(held) - 1) / max(featurize_s + fit_s, 1e-9), 2),
    }


def _check_kinds(kinds) -> None:
    for kind in kinds:
        if kind not in ALL_KINDS:
            raise TextuneError(f"--kind: unknown baseline '{kind}'; choose from {', '.join(ALL_KINDS)}")


def _refuse_non_baseline(dst: Path) -> None:
    if dst.exists() and any(dst.iterdir()) and not layout.is_baseline_dir(dst):
        raise TextuneError(f"{dst}: exists and is not a textune baseline; pick another --out so it is not overwritten")


def _write_dir(
    dst: Path,
    recipe: Recipe,
    task: Task,
    splits: dict[str, Split],
    scores: dict[str, np.ndarray],
    summary: dict[str, Any],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Writes everything into a temporary sibling, then swaps it in: a reader never sees half a baseline.
    ``extra`` writes more files into it (a cross-validated baseline's out-of-fold files)."""
    from textune.predict import prediction_frame
    from textune.report.html import write_report
    from textune.run import write_manifest

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        layout.write_recipe(tmp, dump_recipe(recipe))
        layout.write_task_state(tmp, task.state())
        for name, s in scores.items():
            frame = prediction_frame(task, splits[name].df, s, recipe.data.id)
            _atomic.write_csv(layout.prediction_path(tmp, name), frame)
        if splits["validation"].targets is not None:
            task.plots(tmp / layout.PLOTS, scores["validation"], splits["validation"].targets)
        if extra is not None:
            extra(tmp)
        layout.write_summary(tmp, summary)
        write_manifest(tmp, seed=recipe.train.seed, data_hashes=data_hashes(recipe), device=summary["device"])
        write_report(tmp, name=dst.name)
        _atomic.replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
