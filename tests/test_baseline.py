"""textune baseline: the fine-tune's own split, the task's metrics, run-like directories, errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from textune.baseline import _Linear
from textune.cli import main
from textune.errors import TextuneError


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def test_baselines_score_the_fine_tunes_validation_split(recipe_factory, tmp_path, capsys):
    # no validation file: the split is the seeded held-out 10% of train, which both sides must recompute alike
    recipe = recipe_factory(train={"max_steps": 2, "eval_every": 2})
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    out = tmp_path / "baselines"
    assert main(["baseline", str(recipe), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tfidf baseline" in printed and "embedding baseline" in printed

    fine = _summary(run)
    fine_valid = pd.read_csv(run / "predictions" / "validation.csv")
    for kind in ("tfidf", "embedding"):
        base = out / f"recipe-baseline-{kind}"
        s = _summary(base)
        assert s["kind"] == "baseline" and s["baseline"] == kind and s["task"] == "classification"
        assert s["validation_rows"] == fine["validation_rows"] == 24
        assert s["train_rows"] == fine["train_rows"] == 216
        # the same rows, in the same order, as the fine-tune scored
        valid = pd.read_csv(base / "predictions" / "validation.csv")
        assert valid["id"].tolist() == fine_valid["id"].tolist()
        assert valid["label"].tolist() == fine_valid["label"].tolist()
        # the task's own metrics, and they agree with the saved predictions
        assert set(s["validation"]) == set(fine["validation"])
        assert s["validation"]["accuracy"] == pytest.approx(accuracy_score(valid["label"], valid["pred_label"]))
        assert s["validation"]["f1_macro"] == pytest.approx(
            f1_score(valid["label"], valid["pred_label"], average="macro")
        )
        proba = valid.filter(like="proba_").to_numpy()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
        assert s["main_metric"] == "accuracy"
        assert s["train_seconds"] > 0 and s["train_samples_per_s"] > 0
        for name in ("report.html", "plots/confusion_matrix.png", "recipe.yaml", "task.json", "manifest.json"):
            assert (base / name).is_file(), (kind, name)
    tfidf = _summary(out / "recipe-baseline-tfidf")
    # topic words decide the synthetic label: a bag of n-grams must nail it
    assert tfidf["validation"]["accuracy"] >= 0.9
    # 4 classes: one weight per feature and class, plus 4 intercepts
    assert tfidf["parameters"]["trainable"] == 4 * tfidf["features"] + 4
    emb = _summary(out / "recipe-baseline-embedding")
    assert emb["features"] == 32  # the tiny encoder's hidden size
    assert emb["parameters"]["total"] > emb["parameters"]["trainable"] == 4 * 32 + 4
    # nothing half-written is left beside the results
    assert sorted(p.name for p in out.iterdir()) == ["recipe-baseline-embedding", "recipe-baseline-tfidf"]


def test_baseline_uses_the_validation_file_and_scores_a_labelled_test(recipe_factory, news, tmp_path):
    recipe = recipe_factory(data={"validation": str(news["valid"]), "test": str(news["test"])})
    out = tmp_path / "b"
    assert main(["baseline", str(recipe), "--kind", "tfidf", "--out", str(out)]) == 0
    base = out / "recipe-baseline-tfidf"
    assert not (out / "recipe-baseline-embedding").exists()
    s = _summary(base)
    valid = pd.read_csv(base / "predictions" / "validation.csv")
    assert valid["id"].tolist() == pd.read_csv(news["valid"])["id"].tolist()
    test = pd.read_csv(base / "predictions" / "test.csv")
    assert test["id"].tolist() == pd.read_csv(news["test"])["id"].tolist()
    assert s["test"]["accuracy"] == pytest.approx(accuracy_score(test["label"], test["pred_label"]))

    # a rerun replaces the directory in place
    (base / "stale.txt").write_text("old")
    assert main(["baseline", str(recipe), "--kind", "tfidf", "--out", str(out)]) == 0
    assert not (base / "stale.txt").exists() and (base / "summary.json").is_file()
    assert [p.name for p in out.iterdir()] == ["recipe-baseline-tfidf"]


def test_baseline_refuses_to_overwrite_a_run_and_unknown_kinds(recipe_factory, tmp_path, capsys):
    recipe = recipe_factory()
    out = tmp_path / "b"
    taken = out / "recipe-baseline-tfidf"
    taken.mkdir(parents=True)
    (taken / "summary.json").write_text(json.dumps({"task": "classification"}))  # a fine-tuned run's
    assert main(["baseline", str(recipe), "--kind", "tfidf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a textune baseline" in err and "--out" in err
    assert [p.name for p in taken.iterdir()] == ["summary.json"]
    with pytest.raises(SystemExit):
        main(["baseline", str(recipe), "--kind", "bm25"])


def _stub_task(num_outputs, labels=None, outputs="classes"):
    """A task as the baseline sees it: its output size and what kind of outputs a linear model must give."""
    return SimpleNamespace(
        name="stub", num_outputs=num_outputs, labels=labels, baseline_outputs=lambda: outputs, to_outputs=lambda y: y
    )


def test_linear_model_matches_the_targets_shape():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    # classes: log-probabilities, one column per label even if a label never occurs in train
    y = (X[:, 0] > 0).astype(np.int64)
    lin = _Linear(_stub_task(3, ["a", "b", "c"]), y, seed=0)
    lin.fit(X, y)
    s = lin.scores(X)
    assert s.shape == (40, 3)
    np.testing.assert_allclose(np.exp(s[:, :2]).sum(axis=1), 1.0, atol=1e-6)
    assert (s[:, 2] < -40).all()
    assert (s.argmax(axis=1) == y).mean() > 0.9
    assert lin.parameters == 5 + 1  # two classes seen: sklearn keeps a single weight row
    # numeric targets: ridge, raw values
    yr = (X @ np.arange(5.0)).astype(np.float32)
    lin = _Linear(_stub_task(1, outputs="values"), yr, seed=0)
    lin.fit(X, yr)
    assert lin.kind == "values"
    assert np.corrcoef(lin.scores(X)[:, 0], yr)[0, 1] > 0.99
    # multi-label 0/1 matrix: one-vs-rest logits
    ym = np.stack([X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(np.float32)
    lin = _Linear(_stub_task(2, outputs="per_label"), ym, seed=0)
    lin.fit(X, ym)
    assert lin.kind == "per_label"
    assert ((lin.scores(X) > 0) == ym.astype(bool)).mean() > 0.9
    # ordinal CORAL head: k-1 cumulative logits whose sigmoid is P(level > threshold)
    y3 = np.digitize(X[:, 0], [-0.5, 0.5])  # 3 ordered levels
    lin = _Linear(_stub_task(2, ["lo", "mid", "hi"], outputs="cumulative"), y3, seed=0)
    lin.fit(X, y3)
    assert lin.kind == "cumulative"
    above = 1 / (1 + np.exp(-lin.scores(X)))
    assert above.shape == (40, 2) and (above[:, 1] <= above[:, 0] + 1e-9).all()
    assert ((above > 0.5).sum(axis=1) == y3).mean() > 0.8
    with pytest.raises(TextuneError, match="no linear baseline"):
        _Linear(_stub_task(2, ["a", "b", "c"]), y, seed=0)  # k-1 outputs for k classes, but no CORAL head
