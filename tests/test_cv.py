"""Cross-validation: fold assignment, out-of-fold predictions that never come from a model that saw the row, the
fold-ensemble predictor, resume fold by fold, cross-validated baselines."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import textune.cv as cv
from textune._math import softmax
from textune.cv import assign_folds, load_cv_data, train_cv
from textune.ensemble import FILE_ROW, check_out_of_fold, read_oof
from textune.errors import TextuneError
from textune.predict import Predictor
from textune.recipe import load_recipe, recipe_from_dict
from textune.run import layout
from textune.tasks import get_task

# -- fold assignment -----------------------------------------------------------------------------------------------


def _labels(n_per_class: dict[str, int], seed: int = 0) -> pd.Series:
    values = [c for c, n in n_per_class.items() for _ in range(n)]
    return pd.Series(np.random.default_rng(seed).permutation(values))


def test_folds_are_a_function_of_the_seed():
    y = _labels({"a": 50, "b": 30, "c": 20})
    first = assign_folds(len(y), 5, seed=7, stratify=y)
    assert np.array_equal(first, assign_folds(len(y), 5, seed=7, stratify=y))
    assert not np.array_equal(first, assign_folds(len(y), 5, seed=8, stratify=y))
    assert sorted(np.bincount(first)) == [20] * 5  # every row in exactly one fold, folds of equal size


def test_stratified_folds_keep_each_class_share_within_one_row():
    y = _labels({"a": 61, "b": 27, "c": 9, "d": 3})  # a class with fewer rows than folds too
    folds = assign_folds(len(y), 5, seed=0, stratify=y)
    for label, total in y.value_counts().items():
        per_fold = np.bincount(folds[(y == label).to_numpy()], minlength=5)
        assert np.all(np.abs(per_fold - total / 5) <= 1), (label, per_fold)


def test_grouped_folds_never_split_a_group():
    rng = np.random.default_rng(1)
    groups = pd.Series(np.repeat([f"g{i}" for i in range(40)], rng.integers(1, 6, size=40)))
    y = pd.Series(rng.choice(["x", "y"], size=len(groups)))
    for stratify in (None, y):
        folds = assign_folds(len(groups), 4, seed=3, stratify=stratify, groups=groups)
        per_group = pd.Series(folds).groupby(groups.to_numpy()).nunique()
        assert per_group.max() == 1
        assert set(folds) == {0, 1, 2, 3}
    with pytest.raises(TextuneError, match="fewer than the 4 folds"):
        assign_folds(6, 4, seed=0, groups=pd.Series(["a", "a", "b", "b", "c", "c"]))


def test_regression_folds_are_stratified_on_target_bins(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"id": range(200), "text": ["t"] * 200, "price": rng.lognormal(3, 1, size=200)})
    df.to_csv(tmp_path / "prices.csv", index=False)
    raw = {"task": "regression", "data": {"train": str(tmp_path / "prices.csv"), "target": "price", "id": "id"}}
    data = load_cv_data(recipe_from_dict({**raw, "model": {"name": str(tiny_model)}}), folds=5)
    bins = get_task("regression")(recipe_from_dict(raw)).stratify_on(data.df)
    assert bins.nunique() == 10  # deciles
    for b in bins.unique():
        per_fold = np.bincount(data.folds[(bins == b).to_numpy()], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (b, per_fold)


def test_bad_cv_settings_are_refused(recipe_factory, tmp_path):
    with pytest.raises(TextuneError, match="cv.folds"):
        load_recipe(recipe_factory(cv={"folds": 1}))
    recipe = load_recipe(recipe_factory(cv={"folds": 3, "group": "nope"}))
    with pytest.raises(TextuneError, match="cv.group"):
        load_cv_data(recipe)
    with pytest.raises(TextuneError, match="2 or more"):
        train_cv(load_recipe(recipe_factory()), out=tmp_path / "p", folds=1)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("fault", "says"), [("empty id", "empty id"), ("duplicate id", "duplicate id"), ("reserved column", "reserved")]
)
def test_cv_refuses_the_training_files_plain_training_refuses(recipe_factory, news, tmp_path, fault, says):
    df = pd.read_csv(news["train"])
    if fault == "empty id":
        df.loc[3, "id"] = None
    elif fault == "duplicate id":
        df.loc[5, "id"] = df.loc[2, "id"]
    else:
        df[FILE_ROW] = 0
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    recipe = load_recipe(recipe_factory(data={"train": str(bad)}, cv={"folds": 3}))
    with pytest.raises(TextuneError, match=says) as err:
        load_cv_data(recipe)
    assert str(bad) in str(err.value)


# -- out-of-fold assembly with a memorising model, and resume, without training ------------------------------------


class _Memoriser:
    """A 'model' that knows exactly the rows it trained on: +10 on their true label, nothing on any other row."""

    def __init__(self, fold_dir):
        self.recipe = recipe_from_dict(layout.read_recipe_raw(fold_dir))
        self.task = get_task("classification")(self.recipe)
        self.task.load_state({"labels": self.recipe.data.labels})
        self.seen = set(json.loads((fold_dir / "seen.json").read_text()))

    @classmethod
    def load(cls, fold_dir, **_):
        return cls(fold_dir)

    def logits(self, df, source="input"):
        out = np.zeros((len(df), len(self.task.labels)), dtype=np.float32)
        for i, (row, label) in enumerate(zip(df[FILE_ROW], df["label"], strict=True)):
            if int(row) in self.seen:
                out[i, self.task.labels.index(label)] = 10.0
        return out


def _fake_train(calls, die_on=None):
    """Stands in for training.loop.train: records the call and the rows of the fold's training file."""

    def train(recipe=None, out=None, resume=None, callbacks=None, tracking=None):
        fold_dir = resume or out
        calls.append((fold_dir.name, "resume" if resume else "fresh"))
        if recipe is None:
            recipe = recipe_from_dict(layout.read_recipe_raw(fold_dir))
        layout.write_recipe(fold_dir, json.dumps(recipe.to_dict()))
        if die_on is not None and fold_dir.name == die_on and len(calls) < 3:
            raise KeyboardInterrupt  # killed mid-way: the fold's recipe is written, nothing else
        rows = pd.read_parquet(recipe.data.train)[FILE_ROW].tolist()
        (fold_dir / "seen.json").write_text(json.dumps(rows))
        layout.write_summary(fold_dir, {"validation": {"accuracy": 0.5}, "train_seconds": 1.0})
        (fold_dir / layout.MANIFEST).write_text(json.dumps({"device": "cpu", "precision": "no"}))
        return fold_dir

    return train


def test_no_oof_prediction_comes_from_a_model_that_saw_the_row(recipe_factory, tmp_path, monkeypatch, news):
    calls = []
    monkeypatch.setattr(cv, "train", _fake_train(calls))
    monkeypatch.setattr(cv, "Predictor", _Memoriser)
    parent = train_cv(load_recipe(recipe_factory()), out=tmp_path / "p", folds=3)
    oof = read_oof(parent)
    assert oof.rows.tolist() == list(range(240))  # every training row once, in file order
    assert sorted(np.bincount(oof.folds)) == [80, 80, 80]
    # a memorised row would show its +10: every out-of-fold row must be unknown to the model that scored it
    assert np.allclose(oof.outputs, oof.outputs[:, :1]), "an out-of-fold prediction came from a model that saw it"
    check_out_of_fold(parent, oof)  # the same, read from the folds' training files
    table = pd.read_csv(parent / "oof.csv")
    assert table["row"].tolist() == list(range(240))
    assert table["id"].tolist() == pd.read_csv(news["train"])["id"].tolist()
    assert [c for c in table.columns if c.startswith("proba_")] == [f"proba_{c}" for c in sorted(set(table.label))]


def test_a_rerun_skips_finished_folds_and_resumes_the_killed_one(recipe_factory, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cv, "train", _fake_train(calls, die_on="1"))
    monkeypatch.setattr(cv, "Predictor", _Memoriser)
    recipe = load_recipe(recipe_factory())
    with pytest.raises(KeyboardInterrupt):
        train_cv(recipe, out=tmp_path / "p", folds=3)
    assert calls == [("0", "fresh"), ("1", "fresh")]
    train_cv(recipe, out=tmp_path / "p", folds=3)
    assert calls[2:] == [("1", "resume"), ("2", "fresh")]  # fold 0 finished: not trained again
    train_cv(recipe, out=tmp_path / "p", folds=3)
    assert len(calls) == 4  # complete: nothing trained
    other = load_recipe(recipe_factory("other.yaml", train={"lr": 1e-4}))
    with pytest.raises(TextuneError, match="train.lr differs"):
        train_cv(other, out=tmp_path / "p", folds=3)


# -- a real, tiny cross-validated run -----------------------------------------------------------------------------


def test_cv_run_oof_scores_and_fold_ensemble(recipe_factory, news, tmp_path, monkeypatch):
    train = {"max_steps": 2, "eval_every": 2, "num_threads": 1}
    recipe = load_recipe(recipe_factory(data={"test": str(news["test"])}, train=train))
    parent = train_cv(recipe, out=tmp_path / "cv", folds=3)
    summary = layout.read_summary(parent)
    assert summary["kind"] == "cv" and summary["task"] == "classification" and summary["folds"] == 3
    assert summary["main_metric"] == "accuracy" and summary["metric_direction"] == "max"
    fold_acc = [s["validation"]["accuracy"] for s in summary["fold_summaries"]]
    assert summary["cv"]["accuracy"]["mean"] == pytest.approx(np.mean(fold_acc))
    assert summary["cv"]["accuracy"]["std"] == pytest.approx(np.std(fold_acc, ddof=1))
    table = pd.read_csv(parent / "oof.csv")
    assert summary["cv"]["accuracy"]["oof"] == pytest.approx((table["label"] == table["pred_label"]).mean())
    fold_table = pd.read_csv(parent / "folds" / "0" / "predictions" / "validation.csv")
    assert list(table.columns) == ["row", *fold_table.columns]
    # every out-of-fold row was held out of its fold's training file
    oof = read_oof(parent)
    for k in range(3):
        trained = set(pd.read_parquet(parent / "folds" / str(k) / ".data" / "train.parquet")[FILE_ROW])
        assert trained.isdisjoint(oof.rows[oof.folds == k]) and len(trained) == 160

    # Predictor.load(PARENT): the mean of the folds' softmax probabilities, then log: computed here by hand
    test = pd.read_csv(news["test"])
    ensemble = Predictor.load(parent)
    assert isinstance(ensemble, Predictor)
    folds = [Predictor.load(parent / "folds" / str(k)) for k in range(3)]
    by_hand = np.log(np.mean([softmax(f.logits(test)) for f in folds], axis=0))
    np.testing.assert_allclose(ensemble.logits(test), by_hand, atol=1e-5)
    proba = ensemble.predict_proba(test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    labels = ensemble.task.labels
    assert ensemble.predict(test) == [labels[i] for i in by_hand.argmax(axis=1)]
    written = pd.read_csv(parent / "predictions" / "test.csv")
    assert written["pred_label"].tolist() == ensemble.predict(test)
    assert ensemble.evaluate(test)["accuracy"] == pytest.approx(summary["test"]["accuracy"])

    # fold 1 loses its end (killed while finishing): a re-run trains that fold alone, from its checkpoint
    for name in ("manifest.json", "summary.json"):
        (parent / "folds" / "1" / name).unlink()
    (parent / "manifest.json").unlink()
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("resume"))
        return real(*args, **kwargs)

    real = cv.train
    monkeypatch.setattr(cv, "train", counting)
    train_cv(recipe, out=parent, folds=3)
    assert calls == [parent / "folds" / "1"]
    np.testing.assert_allclose(Predictor.load(parent).logits(test), by_hand, atol=1e-5)


def test_cv_baselines_share_the_folds(recipe_factory, news, tmp_path):
    from textune.baseline import run_baselines

    recipe = load_recipe(recipe_factory(data={"test": str(news["test"])}))
    dirs = run_baselines(recipe, ["tfidf", "gbdt"], out=tmp_path / "b", folds=3)
    assert [d.name for d in dirs] == ["recipe-baseline-tfidf-cv3", "recipe-baseline-gbdt-cv3"]
    expected = load_cv_data(recipe, folds=3).folds
    for d in dirs:
        s = layout.read_summary(d)
        assert s["kind"] == "baseline" and s["folds"] == 3
        oof = read_oof(d)
        assert np.array_equal(oof.folds, expected)  # the same assignment function, seed and rows
        table = pd.read_csv(d / "oof.csv")
        assert s["validation"]["accuracy"] == pytest.approx((table["label"] == table["pred_label"]).mean())
        fold_acc = [f["validation"]["accuracy"] for f in s["fold_summaries"]]
        assert s["cv"]["accuracy"]["mean"] == pytest.approx(np.mean(fold_acc))
        assert s["test"] is not None and (d / "report.html").is_file()
    assert layout.read_summary(dirs[0])["validation"]["accuracy"] >= 0.9  # topic words: TF-IDF nails them
    with pytest.raises(TextuneError, match="is a baseline"):
        Predictor.load(dirs[0])
    shutil.rmtree(tmp_path / "b")
