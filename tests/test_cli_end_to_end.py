"""The whole user path through the real CLI: init -> check -> train -> evaluate -> predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from textune import Predictor, classify
from textune.cli import main
from textune.recipe import recipe_from_dict


def test_init_writes_a_recipe_that_validates(capsys):
    assert main(["init", "classification"]) == 0
    raw = yaml.safe_load(capsys.readouterr().out)
    recipe = recipe_from_dict(raw)
    assert recipe.task == "classification"
    assert recipe.model.name == "bundled:minilm"


def test_check_reports_counts_and_truncation(recipe_factory, capsys):
    recipe = recipe_factory(data={"max_length": 12})
    assert main(["check", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "train: 216 rows" in out and "validation: 24 rows" in out
    # 4 balanced classes, stratified 10% split: 54 of each left in train
    assert "labels: Business 54, Sci/Tech 54, Sports 54, World 54" in out
    truncated = int(out.split("truncated at 12")[0].rsplit(";", 1)[1].strip().split()[0])
    assert truncated > 0


@pytest.mark.parametrize("batching", [{"batch_size": 16}, {"max_tokens": 150}], ids=["rows", "max_tokens"])
def test_check_plans_the_batches_that_training_runs(recipe_factory, tmp_path, capsys, batching):
    recipe = recipe_factory(train={"eval_every": None, **batching})
    assert main(["check", str(recipe)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "batches:" in x)
    planned = int(line.split("batches:")[1].split()[0])
    if "batch_size" in batching:
        assert planned == 14  # ceil(216 / 16)
        assert "of 8-16 (mean 15.4) rows" in line
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == planned


def test_train_evaluate_predict(recipe_factory, news, tmp_path, capsys):
    # mean pooling: the tiny random encoder then learns the topics on every seed tried (1.00 validation accuracy on 5
    # seeds); its architecture head (CLS + pooler) stalls at two topics on about half the seeds
    recipe = recipe_factory(
        data={"validation": str(news["valid"]), "test": str(news["test"])},
        model={"pooling": "mean"},
        train={"epochs": 3},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {run}" in out

    for name in (
        "recipe.yaml",
        "manifest.json",
        "task.json",
        "metrics.jsonl",
        "summary.json",
        "report.html",
        "model/config.json",
        "model/encoder/model.safetensors",  # textune's head: the encoder, and the head beside it
        "model/fusion.safetensors",
        "checkpoints/last/state.json",
        "plots/loss.png",
        "plots/metrics.png",
        "plots/confusion_matrix.png",
        "predictions/validation.csv",
        "predictions/test.csv",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    # the synthetic topics are learnable: far above the 25% of chance after 3 short epochs
    assert summary["validation"]["accuracy"] >= 0.9
    # a full fine-tune: everything trains but BERT's pooler, which mean pooling does not use
    total, trainable = summary["parameters"]["total"], summary["parameters"]["trainable"]
    assert 0 < total - trainable < 0.1 * total
    assert summary["train_samples_per_s"] > 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["data_sha256"]) == {"train", "validation", "test"}
    assert {"model/encoder/model.safetensors", "model/fusion.safetensors"} <= set(manifest["files_sha256"])
    assert json.loads((run / "task.json").read_text())["labels"] == [
        "Business",
        "Sci/Tech",
        "Sports",
        "World",
    ]

    # evaluate: same numbers as the run's own validation metrics
    assert main(["evaluate", str(run), "--input", str(news["valid"])]) == 0
    saved = json.loads((run / "evaluations" / "valid.json").read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(summary["validation"]["accuracy"])

    # predict: input order and ids kept, labels from the label set
    sub_path = tmp_path / "submission.csv"
    assert main(["predict", str(run), "--input", str(news["test"]), "--output", str(sub_path)]) == 0
    sub = pd.read_csv(sub_path)
    test = pd.read_csv(news["test"])
    assert sub.columns.tolist() == ["id", "label"]
    assert sub["id"].tolist() == test["id"].tolist()
    assert set(sub["label"]) <= {"Business", "Sci/Tech", "Sports", "World"}
    assert (sub["label"] == test["label"]).mean() >= 0.9

    proba_path = tmp_path / "proba.csv"
    assert main(["predict", str(run), "--input", str(news["test"]), "--output", str(proba_path), "--proba"]) == 0
    proba = pd.read_csv(proba_path)
    # --proba keeps the predicted label beside one probability column per class
    assert proba.columns.tolist() == ["id", "label", "Business", "Sci/Tech", "Sports", "World"]
    assert proba.iloc[:, 2:].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert (proba.iloc[:, 2:].idxmax(axis=1) == sub["label"]).all() and (proba["label"] == sub["label"]).all()

    # Python API agrees with the CLI
    predictor = Predictor.load(run)
    assert predictor.predict(test) == sub["label"].tolist()
    text = f"{test.loc[0, 'title']}. {test.loc[0, 'description']}"
    assert classify(predictor, text) == sub.loc[0, "label"]
    assert classify(str(run), text) == sub.loc[0, "label"]


def test_predict_restores_input_order_under_length_sorting(recipe_factory, tmp_path):
    """Inference runs longest-first; every prediction must still land on its own row."""
    recipe = recipe_factory(train={"epochs": 3})
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    predictor = Predictor.load(run)
    texts = [
        "stocks profit",
        "football match season " * 5,
        "software internet",
        "election minister " * 8,
        "the bank",
        "tennis " * 3,
        "stocks profit",
    ]
    together = predictor.predict_proba(texts).to_numpy()
    one_by_one = np.stack([predictor.predict_proba([t]).to_numpy()[0] for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    # and the rows really differ, so a permutation would have been caught
    assert np.abs(together[0] - together[3]).max() > 1e-2
    # the same text twice: equal up to the last bits (rows of one batch split over CPU threads may round apart)
    np.testing.assert_allclose(together[0], together[-1], rtol=0, atol=1e-6)
