"""Quick references on the recipe's own split: TF-IDF + linear model, and frozen embeddings + linear model.

``textune baseline recipe.yaml`` answers "how much does fine-tuning buy over the cheap options?". Each baseline
reads the data through :func:`textune.prepare.prepare`, so its train/validation rows are exactly the
fine-tune's (same seed, same stratified split), and scores validation (and a labelled test file) with the task's
own metrics. scikit-learn does the modelling:

* ``tfidf``: word 1-2-grams and character 2-5-grams (within word boundaries), sublinear TF-IDF, then logistic
  regression (classification) or ridge regression (numeric targets).
* ``embedding``: mean-pooled, L2-normalised embeddings from a frozen encoder (default: the recipe's model), then
  the same linear model.

Each result is a directory shaped like a training run (``summary.json`` with ``"kind": "baseline"``, predictions,
plots, ``report.html``, ``manifest.json``) so that ``textune compare`` lists runs and baselines alike. The fitted
scikit-learn models are not saved: a baseline is a number to beat, not a model to deploy (and saving it would
mean pickles, which textune refuses to read).
"""

from __future__ import annotations

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
from textune.tasks import Task

log = logging.getLogger(__name__)

KINDS = ("tfidf", "embedding")
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


FEATURIZERS: dict[str, Callable[..., _Features]] = {
    "tfidf": lambda splits, recipe, model: _tfidf_features(splits, recipe),
    "embedding": _embedding_features,
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
        out[:, self.model.classes_] = self.model.predict_log_proba(X)
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
        kind: ``tfidf`` or ``embedding``.
        splits, task: already loaded splits (to share them between baselines); loaded from the recipe if absent.
        out: parent directory (default ``output.dir``); the baseline goes to ``<out>/<recipe>-baseline-<kind>``.
        embed_model: encoder of the embedding baseline (default: ``model.name``); a run directory works too.

    Returns:
        The baseline directory (replaced if it existed).

    Raises:
        TextuneError: bad data or recipe, an unsupported task, or a destination that is a fine-tuned run.
    """
    if kind not in KINDS:
        raise TextuneError(f"--kind: unknown baseline '{kind}'; choose from {', '.join(KINDS)}")
    dst = Path(out or recipe.output.dir) / f"{recipe._stem}-baseline-{kind}"
    _refuse_non_baseline(dst)
    if task is None or splits is None:
        data = prepare(recipe, tokens=False, features=False)
        task, splits = data.task, data.splits
    t_start = time.perf_counter()
    linear = _Linear(task, splits["train"].targets, recipe.train.seed)
    feats = FEATURIZERS[kind](splits, recipe, embed_model)
    t0 = time.perf_counter()
    linear.fit(feats.by_split["train"], splits["train"].targets)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = {n: linear.scores(X) for n, X in feats.by_split.items() if n != "train"}
    predict_s = time.perf_counter() - t0 + feats.apply_seconds
    results = {n: task.metrics(s, splits[n].targets) for n, s in scores.items() if splits[n].targets is not None}
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
) -> list[Path]:
    """Runs each baseline in ``kinds`` on one shared read of the data (see :func:`run_baseline`)."""
    for kind in kinds:
        if kind not in KINDS:
            raise TextuneError(f"--kind: unknown baseline '{kind}'; choose from {', '.join(KINDS)}")
    data = prepare(recipe, tokens=False, features=False)
    task, splits = data.task, data.splits
    return [
        run_baseline(recipe, kind, splits=splits, task=task, out=out, embed_model=embed_model)
        for kind in dict.fromkeys(kinds)
    ]


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
) -> None:
    """Writes everything into a temporary sibling, then swaps it in: a reader never sees half a baseline."""
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
        layout.write_summary(tmp, summary)
        write_manifest(tmp, seed=recipe.train.seed, data_hashes=data_hashes(recipe), device=summary["device"])
        write_report(tmp, name=dst.name)
        _atomic.replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
