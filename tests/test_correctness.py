"""Wrong answers fixed in the reshape, each pinned by a test that failed before the fix.

Every test goes through the CLI or the public API (``textune.train``, ``load_recipe``, ``Predictor``), so what it
guards against is a wrong result or a crash that a user would see, not an internal name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _cli import fails
from conftest import make_news, write_recipe

from textune import Predictor, load_recipe, train
from textune.cli import main


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rechecksum(run: Path, rel: str) -> None:
    """Records the current bytes of ``run/rel`` in the manifest, as someone covering up an edit would."""
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files_sha256"][rel] = hashlib.sha256((run / rel).read_bytes()).hexdigest()
    (run / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_model) -> Path:
    """One tiny classification run keyed by ``data.id: id``; tests that alter it work on a copy."""
    root = tmp_path_factory.mktemp("small_run")
    make_news(80).to_csv(root / "train.csv", index=False)
    recipe = write_recipe(root / "recipe.yaml", tiny_model, root / "train.csv", train={"max_steps": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTUNE_CACHE", str(root / "cache"))
        return train(load_recipe(recipe), out=root / "run")


# ------------------------------------------------------------------------------------------- export, features


def test_exported_fusion_run_predicts_like_the_run(recipe_factory, news, tmp_path, capsys):
    """An exported run with tabular features must carry the fitted feature statistics: predicting from the export
    gives the run's own predictions (it used to crash on a feature-width mismatch)."""
    for name in ("train", "test"):
        df = pd.read_csv(news[name])
        df["words"] = df["description"].str.split().str.len()
        df.to_csv(news[name], index=False)
    recipe = recipe_factory(
        features={"numeric": ["words"], "text_stats": True, "head": {"widths": [8]}}, train={"max_steps": 3}
    )
    run = train(load_recipe(recipe), out=tmp_path / "run")
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    out = tmp_path / "sub.csv"
    argv = ["predict", str(tmp_path / "export"), "--input", str(news["test"]), "--output", str(out), "--proba"]
    assert main(argv) == 0, capsys.readouterr().err
    sub = pd.read_csv(out)
    test = pd.read_csv(news["test"])
    own = Predictor.load(run)
    assert sub["id"].tolist() == test["id"].tolist()
    assert sub["label"].tolist() == own.predict(test)
    proba = own.predict_proba(test)
    np.testing.assert_allclose(sub[proba.columns].to_numpy(), proba.to_numpy(), atol=1e-6)


# --------------------------------------------------------------------------------- statistics from train only


def test_regression_target_mean_comes_from_training_rows_only(tmp_path, tiny_model):
    """The target mean/std that de-standardise every prediction are fitted on the training rows, not on the rows
    held out for validation too (that leaked validation targets into the model)."""
    df = make_news(60)
    df["price"] = np.where(np.arange(60) % 10 == 0, 1000.0, 10.0 + np.arange(60) % 7)
    df.to_csv(tmp_path / "train.csv", index=False)
    data = {
        "train": str(tmp_path / "train.csv"),
        "text": "description",
        "target": "price",
        "id": "id",
        "max_length": 32,
    }
    raw = {
        "task": "regression",
        "data": data,
        "model": {"name": str(tiny_model)},
        "train": {"max_steps": 2, "batch_size": 16, "progress": False, "precision": "fp32"},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    run = train(load_recipe(tmp_path / "r.yaml"), out=tmp_path / "run")

    held_out = set(pd.read_csv(run / "predictions" / "validation.csv")["id"])
    fit_rows = df[~df["id"].isin(held_out)]
    assert 0 < len(held_out) < len(df) and len(fit_rows) == len(df) - len(held_out)
    assert fit_rows["price"].mean() != pytest.approx(df["price"].mean(), rel=1e-3)  # the two answers differ
    task = Predictor.load(run).task  # the saved statistics that de-standardise its predictions
    assert task.mean == pytest.approx(fit_rows["price"].mean(), rel=1e-9)
    assert task.std == pytest.approx(fit_rows["price"].std(ddof=0), rel=1e-6)


def test_balanced_class_weights_come_from_training_rows_only(recipe_factory, news, tmp_path):
    """``train.class_weights: balanced`` weighs classes by their counts in the training rows, not in the whole file
    (validation rows included)."""
    df = make_news(240)
    df["label"] = ["World"] * 137 + ["Sports"] * 61 + ["Business"] * 29 + ["Sci/Tech"] * 13
    df.to_csv(news["train"], index=False)
    recipe = recipe_factory(train={"max_steps": 2, "class_weights": "balanced"})
    run = train(load_recipe(recipe), out=tmp_path / "run")

    held_out = set(pd.read_csv(run / "predictions" / "validation.csv")["id"])
    task = Predictor.load(run).task  # the saved task state

    def balanced(labels: pd.Series) -> list[float]:
        counts = labels.value_counts()
        return [len(labels) / (len(counts) * counts[lab]) for lab in task.labels]

    want = balanced(df.loc[~df["id"].isin(held_out), "label"])
    assert np.abs(np.subtract(want, balanced(df["label"]))).max() > 1e-4  # the two answers differ
    assert task.class_weights == pytest.approx(want, rel=1e-9)


# ------------------------------------------------------------------------------------ refused before training


def test_preference_with_features_is_refused_before_training(tmp_path, tiny_model, capsys):
    """The preference task takes no tabular features: say so at once (it used to crash mid-training with an
    IndexError, leaving a half-written run directory)."""
    pairs = pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(30)],
            "prompt": ["explain the answer"] * 30,
            "response_a": ["clear helpful answer", "wrong rude answer", "vague answer"] * 10,
            "response_b": ["wrong rude answer", "clear helpful answer", "vague answer"] * 10,
            "winner_model_a": [1, 0, 0] * 10,
            "winner_model_b": [0, 1, 0] * 10,
            "winner_tie": [0, 0, 1] * 10,
        }
    )
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    raw = {
        "task": "preference",
        "data": {"train": str(tmp_path / "pairs.csv"), "id": "id", "max_length": 32},
        "model": {"name": str(tiny_model)},
        "features": {"text_stats": True},
        "train": {"max_steps": 2, "batch_size": 8, "progress": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    line = fails(capsys, "train", tmp_path / "r.yaml", "--out", tmp_path / "run")
    assert "features" in line
    assert not (tmp_path / "run").exists()


def test_misspelt_early_stopping_metric_is_refused_before_training(recipe_factory, tmp_path, capsys):
    """A typo in the watched metric is a recipe error with a suggestion (it used to raise KeyError at the first
    evaluation)."""
    recipe = recipe_factory(train={"max_steps": 4, "eval_every": 2, "early_stopping": {"metric": "acuracy"}})
    line = fails(capsys, "train", recipe, "--out", tmp_path / "run")
    assert "did you mean 'accuracy'" in line
    assert not (tmp_path / "run").exists()


def test_max_length_beyond_the_position_table_is_refused(recipe_factory, tmp_path, capsys):
    """``data.max_length`` larger than the model can read fails in the forward pass; check and train say so first
    (check used to pass)."""
    recipe = recipe_factory(data={"max_length": 1024})
    for argv in (["check", recipe], ["train", recipe, "--out", tmp_path / "run"]):
        line = fails(capsys, *argv)
        assert "data.max_length" in line and "512" in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- data.id


def test_predict_refuses_input_without_the_id_column(small_run, news, tmp_path, capsys):
    """A run keyed by ``data.id`` writes submissions keyed by it: an input without that column is refused, not
    answered with row numbers under the id header."""
    pd.read_csv(news["test"]).drop(columns=["id"]).to_csv(tmp_path / "no_id.csv", index=False)
    out = tmp_path / "sub.csv"
    line = fails(capsys, "predict", small_run, "--input", tmp_path / "no_id.csv", "--output", out)
    assert "'id'" in line
    assert not out.exists()


def test_bad_ids_are_refused_before_training(recipe_factory, news, tmp_path, capsys):
    """Duplicate or empty ids, or a ``data.id`` naming no column, would key predictions ambiguously or not at all:
    each is one error naming the file and the id, and nothing is written."""
    run = tmp_path / "run"
    test = pd.read_csv(news["test"])
    test.loc[5, "id"] = test.loc[2, "id"]
    test.to_csv(tmp_path / "dup.csv", index=False)
    line = fails(capsys, "train", recipe_factory(data={"test": str(tmp_path / "dup.csv")}), "--out", run)
    assert str(tmp_path / "dup.csv") in line and repr(test.loc[2, "id"]) in line and "duplicate" in line

    df = pd.read_csv(news["train"])
    df.loc[3, "id"] = None
    df.to_csv(news["train"], index=False)
    line = fails(capsys, "train", recipe_factory(), "--out", run)
    assert str(news["train"]) in line and "empty id" in line

    line = fails(capsys, "train", recipe_factory(data={"id": "key"}), "--out", run)
    assert "data.id" in line and "'key'" in line
    assert not run.exists()


# ---------------------------------------------------------------------------------------------- baselines


def test_baseline_directory_cannot_be_resumed_or_predicted(recipe_factory, news, tmp_path, capsys):
    """A baseline directory holds scores, no model: ``train --resume`` must not fine-tune into it, and ``predict``
    says it is a baseline instead of suggesting --resume."""
    assert main(["baseline", str(recipe_factory()), "--kind", "tfidf", "--out", str(tmp_path / "b")]) == 0
    base = tmp_path / "b" / "recipe-baseline-tfidf"
    before = tree_bytes(base)
    assert "baseline" in fails(capsys, "train", "--resume", base)
    assert tree_bytes(base) == before

    line = fails(capsys, "predict", base, "--input", news["test"], "--output", tmp_path / "sub.csv")
    assert "baseline" in line and "--resume" not in line
    assert not (tmp_path / "sub.csv").exists()


# ------------------------------------------------------------------------------------- altered run directories


def _garbage_weights(run: Path) -> str:
    (run / "model" / "model.safetensors").write_bytes(b"not a safetensors file at all" * 10)
    return "model/model.safetensors"


def _broken_yaml(run: Path) -> str:
    (run / "recipe.yaml").write_text("task: classification\ntrain: {lr: [unclosed\n")
    return "recipe.yaml"


def _other_task(run: Path) -> str:
    raw = yaml.safe_load((run / "recipe.yaml").read_text())
    raw["task"] = "regression"  # a valid recipe, but task.json holds classification labels, no target statistics
    raw["data"]["target"] = raw["data"].pop("label")
    (run / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return "recipe.yaml"


@pytest.mark.parametrize("alter", [_garbage_weights, _broken_yaml, _other_task], ids=lambda f: f.__name__[1:])
def test_altered_and_rechecksummed_run_is_one_clear_error(small_run, news, tmp_path, capsys, alter):
    """Garbage weights, a recipe that is no YAML, or a recipe of another task than the saved task state, each
    re-checksummed in the manifest so that it passes verification: predict refuses with one line, not a
    traceback."""
    run = shutil.copytree(small_run, tmp_path / "run")
    rechecksum(run, alter(run))
    out = tmp_path / "sub.csv"
    fails(capsys, "predict", run, "--input", news["test"], "--output", out)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ embedding cache


def test_embedding_cache_follows_the_weights_not_the_path(recipe_factory, news, tmp_path, tiny_model, monkeypatch):
    """Frozen-embedding features are cached on disk; a model directory retrained in place must give new
    embeddings, not the cached ones of its old weights."""
    import torch
    from transformers import AutoModel

    from textune import features

    monkeypatch.setenv("TEXTUNE_CACHE", str(tmp_path / "cache"))
    encoder = shutil.copytree(tiny_model, tmp_path / "encoder")
    recipe = load_recipe(recipe_factory(features={"embeddings": {"model": str(encoder)}}))
    spec = recipe.features.embeddings[0]
    df = pd.read_csv(news["test"]).head(6)
    texts = df["description"].tolist()

    monkeypatch.setattr(features, "_ENCODERS", {})
    before = features.embedding_features(spec, df, texts, "x.csv")

    model = AutoModel.from_pretrained(encoder)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(-1.5)
    model.save_pretrained(encoder)  # same path, other weights

    monkeypatch.setattr(features, "_ENCODERS", {})
    after = features.embedding_features(spec, df, texts, "x.csv")
    assert before.shape == after.shape
    assert np.abs(after - before).max() > 1e-3
    # and they are the new weights' own embeddings: computed again without any cache, the same numbers
    shutil.rmtree(tmp_path / "cache")
    monkeypatch.setattr(features, "_ENCODERS", {})
    np.testing.assert_allclose(features.embedding_features(spec, df, texts, "x.csv"), after, atol=1e-6)
