"""Ensembles: fitted on out-of-fold predictions only, blended in the task's space with its guarantees kept, and
predicted through Predictor.load exactly as documented."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from textune._math import softmax
from textune.cv import train_cv
from textune.ensemble import (
    ENSEMBLE,
    FILE_ROW,
    OOF,
    Blend,
    fit_ensemble,
    from_space,
    to_space,
    write_oof,
)
from textune.errors import TextuneError
from textune.predict import Predictor
from textune.recipe import load_recipe, recipe_from_dict
from textune.run import layout
from textune.tasks import get_task

LABELS = ["a", "b", "c"]
N, K = 90, 3
FOLDS = np.arange(N) % K


def _targets(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, len(LABELS), size=N)


def _member(root, name, outputs, targets, *, kind="cv", folds=FOLDS, trained=None):
    """A cross-validated (or baseline) directory as the writers leave it, without training anything.

    ``trained(k)`` gives the rows fold k's model trained on (default: every row outside fold k, as it must be).
    """
    d = root / name
    d.mkdir()
    recipe = {"task": "classification", "data": {"train": "x.csv", "labels": LABELS, "id": "id"}, "cv": {"folds": K}}
    layout.write_recipe(d, yaml.safe_dump(recipe))
    layout.write_task_state(d, {"task": "classification", "labels": LABELS, "class_weights": None})
    accuracy = float((np.asarray(outputs).argmax(axis=1) == targets).mean())
    layout.write_summary(d, {"kind": kind, "main_metric": "accuracy", "validation": {"accuracy": accuracy}})
    rows = np.arange(N)
    write_oof(d, OOF(rows, folds, targets, outputs))
    pd.DataFrame({"row": rows, "id": [f"r{i}" for i in rows], "label": [LABELS[t] for t in targets]}).to_csv(
        d / "oof.csv", index=False
    )
    (d / layout.MANIFEST).write_text(json.dumps({"precision": None}))
    if kind == "cv":
        for k in range(K):
            fold = d / "folds" / str(k)
            fold.mkdir(parents=True)
            seen = rows[folds != k] if trained is None else trained(k)
            pd.DataFrame({FILE_ROW: seen}).to_parquet(fold / "train.parquet")
            layout.write_recipe(fold, yaml.safe_dump({"data": {"train": str(fold / "train.parquet")}}))
    return d


def _onehot(targets, scale=5.0):
    return scale * np.eye(len(LABELS))[targets]


def _weights(ens):
    return [m["weight"] for m in json.loads((ens / ENSEMBLE).read_text())["members"]]


# -- fitted on out-of-fold rows only -------------------------------------------------------------------------------


def test_the_member_perfect_out_of_fold_gets_all_the_weight(tmp_path):
    y = _targets()
    rng = np.random.default_rng(1)
    noisy = _member(tmp_path, "noisy", rng.normal(size=(N, 3)), y)
    half = _onehot(np.where(rng.random(N) < 0.5, y, (y + 1) % 3))
    halfway = _member(tmp_path, "half", half, y)
    perfect = _member(tmp_path, "perfect", _onehot(y, 2.0), y)
    ens = fit_ensemble([noisy, halfway, perfect], tmp_path / "ens")
    assert _weights(ens) == [0.0, 0.0, 1.0]
    summary = layout.read_summary(ens)
    assert summary["kind"] == "ensemble" and summary["predictable"] is True
    assert [m["cv_score"] for m in summary["members"]] == [
        layout.read_summary(d)["validation"]["accuracy"] for d in (noisy, halfway, perfect)
    ]
    assert summary["validation"]["accuracy"] == 1.0  # cross-fitted: each fold's weights from the other folds
    oof = pd.read_csv(ens / "oof.csv")
    assert (oof["pred_label"] == oof["label"]).all() and oof["row"].tolist() == list(range(N))
    stacked = fit_ensemble([noisy, halfway, perfect], tmp_path / "stack", method="stack")
    weights = _weights(stacked)
    assert weights[2] > 10 * max(weights[0], weights[1])


def test_the_ensemble_reports_each_folds_score_as_mean_and_spread(tmp_path):
    """The figure set beside a baseline's mean +- std: the ensemble's cross-fitted outputs scored fold by fold."""
    y = _targets()
    wrong_in_fold_0 = np.where(FOLDS == 0, (y + 1) % 3, y)  # right everywhere but fold 0
    only = _member(tmp_path, "m", _onehot(wrong_in_fold_0), y)
    cv = layout.read_summary(fit_ensemble([only], tmp_path / "ens"))["cv"]["accuracy"]
    assert cv["mean"] == pytest.approx(2 / 3) and cv["std"] == pytest.approx(np.std([0, 1, 1], ddof=1))
    assert cv["oof"] == pytest.approx(2 / 3)


def test_in_sample_out_of_fold_predictions_are_refused(tmp_path):
    y = _targets()
    honest = _member(tmp_path, "honest", np.zeros((N, 3)), y)
    # its 'out-of-fold' rows were in its fold models' training rows: perfect, and worthless
    cheat = _member(tmp_path, "cheat", _onehot(y), y, trained=lambda k: np.arange(N))
    with pytest.raises(TextuneError, match="come from a model trained on those rows"):
        fit_ensemble([honest, cheat], tmp_path / "ens")
    with pytest.raises(TextuneError, match="come from a model trained on those rows"):
        fit_ensemble([cheat], tmp_path / "ens")
    assert not (tmp_path / "ens").exists()


def test_members_must_share_rows_folds_and_labels(tmp_path):
    y = _targets()
    a = _member(tmp_path, "a", np.zeros((N, 3)), y)
    shifted = _member(tmp_path, "shifted", np.zeros((N, 3)), y, folds=(FOLDS + 1) % K)
    with pytest.raises(TextuneError, match="fold assignment differs"):
        fit_ensemble([a, shifted], tmp_path / "ens")
    other = _member(tmp_path, "other", np.zeros((N, 3)), _targets(seed=5))
    with pytest.raises(TextuneError, match="targets differ"):
        fit_ensemble([a, other], tmp_path / "ens")
    run = tmp_path / "run"
    run.mkdir()
    layout.write_summary(run, {"main_metric": "accuracy", "validation": {"accuracy": 1.0}})
    with pytest.raises(TextuneError, match="no out-of-fold predictions"):
        fit_ensemble([a, run], tmp_path / "ens")
    with pytest.raises(TextuneError, match="given twice"):
        fit_ensemble([a, a], tmp_path / "ens")


def test_a_baseline_with_weight_makes_a_report_only_ensemble(tmp_path):
    y = _targets()
    cv = _member(tmp_path, "cv", np.zeros((N, 3)), y)
    base = _member(tmp_path, "tfidf", _onehot(y), y, kind="baseline")
    ens = fit_ensemble([cv, base], tmp_path / "ens")
    assert _weights(ens) == [0.0, 1.0]
    assert layout.read_summary(ens)["predictable"] is False
    with pytest.raises(TextuneError, match="report-only ensemble"):
        Predictor.load(ens)
    # a baseline that earns no weight leaves the ensemble predictable
    ens = fit_ensemble([_member(tmp_path, "good", _onehot(y), y), base], tmp_path / "ens2")
    assert _weights(ens) == [1.0, 0.0] and layout.read_summary(ens)["predictable"] is True


# -- the task's guarantees -----------------------------------------------------------------------------------------


def _task(raw):
    return get_task(raw["task"])(recipe_from_dict(raw))


def test_preference_blend_stays_symmetric_and_sums_to_one():
    task = _task({"task": "preference"})
    rng = np.random.default_rng(0)
    swap = [1, 0, 2]
    members = [np.log(softmax(rng.normal(size=(20, 3)))) for _ in range(2)]  # each member already symmetric:
    swapped = [m[:, swap] for m in members]  # its outputs on (b, a) are those on (a, b), a and b swapped
    for blend in (Blend("greedy", np.array([0.3, 0.7])), Blend("stack", np.array([0.5, 2.0]))):
        straight = blend.combine(task, [to_space(task, m) for m in members])
        mirrored = blend.combine(task, [to_space(task, m) for m in swapped])
        np.testing.assert_allclose(task.probabilities(mirrored), task.probabilities(straight)[:, swap], atol=1e-6)
        np.testing.assert_allclose(task.predictions(straight, proba=True).sum(axis=1), 1.0, atol=1e-9)


def test_greedy_selection_scores_members_as_calibrated():
    """The ensemble is reported calibrated, so its selection scores calibrated too: a member whose probabilities
    are badly scaled but always right (a temperature makes it near perfect) must not lose to a confident, noisy one
    (scored raw it does: gradient-boosted trees' over-confident probabilities were left out that way)."""
    from textune.ensemble import greedy_selection

    task = _task({"task": "preference"})
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=600)
    truth = np.eye(3)[y]
    timid = 0.05 * truth  # always right, barely confident
    noisy = truth + rng.normal(scale=0.8, size=(600, 3))
    raw = [task.metrics(m, y)["log_loss"] for m in (timid, noisy)]
    assert raw[0] > raw[1]  # raw, the timid member scores worse
    weights = greedy_selection(task, [to_space(task, m) for m in (timid, noisy)], y, "log_loss")
    assert weights[0] > 0.9
    assert task.calibration_state() == 1.0  # selection leaves the task uncalibrated


def test_ordinal_levels_stay_ordered():
    task = _task({"task": "ordinal", "data": {"labels": ["A1", "A2", "B1", "B2"]}})
    task.load_state({"labels": ["A1", "A2", "B1", "B2"]})
    # thresholds that cross (P(> A2) above P(> A1)) in both members
    members = [np.array([[-1.0, 2.0, -3.0]] * 4), np.array([[0.5, 1.5, 1.0]] * 4)]
    combined = Blend("greedy", np.array([0.5, 0.5])).combine(task, [to_space(task, m) for m in members])
    assert np.all(np.diff(combined, axis=1) <= 1e-6)  # P(level > k) never rises with k
    proba = task.predictions(combined, proba=True).to_numpy()
    assert np.all(proba >= 0) and np.allclose(proba.sum(axis=1), 1.0)


def test_regression_blends_transformed_targets_and_back_transforms_once():
    raw = {"task": "regression", "data": {"target": "price"}, "regression": {"transform": "log1p"}}
    tasks = [_task(raw) for _ in range(3)]
    for task, (mean, std) in zip(tasks, [(1.0, 2.0), (3.0, 0.5), (2.0, 1.0)], strict=True):
        task.load_state({"mean": mean, "std": std})  # each fold standardises with its own training rows
    y = np.array([10.0, 100.0])

    def outputs(task, values):  # what a member whose prediction is `values` outputs
        return task.to_outputs(values).reshape(-1, 1)

    spaces = [to_space(tasks[0], outputs(tasks[0], y)), to_space(tasks[1], outputs(tasks[1], y * 3))]
    combined = Blend("greedy", np.array([0.5, 0.5])).combine(tasks[2], spaces)
    expected = np.expm1((np.log1p(y) + np.log1p(3 * y)) / 2)  # the mean of log1p(y), back-transformed once
    np.testing.assert_allclose(tasks[2].predictions(combined).iloc[:, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(from_space(tasks[1], to_space(tasks[1], outputs(tasks[1], y))), outputs(tasks[1], y))


# -- a fitted ensemble of two real cross-validated runs predicts as documented -------------------------------------


def test_ensemble_of_cv_runs_predicts_the_documented_combination(recipe_factory, news, tmp_path):
    train = {"max_steps": 2, "eval_every": 2, "num_threads": 1}
    first = load_recipe(recipe_factory(train=train))
    second = load_recipe(recipe_factory("second.yaml", train={**train, "seed": 7, "lr": 1e-2}, cv={"seed": 42}))
    runs = [train_cv(r, out=tmp_path / name, folds=2) for r, name in ((first, "cv1"), (second, "cv2"))]
    test = pd.read_csv(news["test"])
    members = [[Predictor.load(run / "folds" / str(k)) for k in range(2)] for run in runs]
    # each member: the mean of its folds' probabilities
    probs = [np.mean([softmax(f.logits(test)) for f in folds], axis=0) for folds in members]
    for method in ("greedy", "stack"):
        ens = fit_ensemble(runs, tmp_path / method, method=method)
        w = np.asarray(_weights(ens))
        if method == "greedy":  # the weighted mean of the members' probabilities, then log
            by_hand = np.log(sum(wi * p for wi, p in zip(w, probs, strict=True)) / w.sum())
        else:  # the weighted sum of the members' log-probabilities
            by_hand = sum(wi * np.log(p) for wi, p in zip(w, probs, strict=True))
        predictor = Predictor.load(ens)
        np.testing.assert_allclose(predictor.logits(test), by_hand, atol=1e-4)
        assert predictor.predict(test) == [predictor.task.labels[i] for i in by_hand.argmax(axis=1)]
        sub = predictor.submission(test, proba=True)
        assert sub["id"].tolist() == test["id"].tolist()
        np.testing.assert_allclose(sub[predictor.task.labels].sum(axis=1), 1.0, atol=1e-6)
    assert (_weights(tmp_path / "stack") > np.zeros(2)).all()  # both members take part in the stack
