"""Ordinal levels: QWK against scikit-learn, the cumulative head's probabilities, and the CLI path end to end."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from textune import Predictor
from textune.cli import main
from textune.recipe import recipe_from_dict
from textune.tasks.ordinal import OrdinalTask, cumulative_to_levels, quadratic_weighted_kappa

LEVELS = ["low", "mid", "high", "top"]
WORDS = {
    "low": "cat dog sun red big".split(),
    "mid": "market school travel weather family".split(),
    "high": "economic political significant analysis consequence".split(),
    "top": "epistemological hermeneutic paradigmatic ontological dialectical".split(),
}


def make_levels(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        level = LEVELS[i % 4]
        words = [rng.choice(WORDS[level]) for _ in range(6)] + rng.choices("the a of and".split(), k=4)
        rng.shuffle(words)
        rows.append({"id": f"t{i}", "text": " ".join(words), "level": level})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(5))
def test_qwk_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    k = 6
    y = rng.integers(0, k, 50)
    # predictions near the truth, some far off, and (seed 0) a level nobody predicts
    p = np.clip(y + rng.integers(-2, 3, 50), 0, k - 1 if seed else k - 2)
    assert quadratic_weighted_kappa(y, p, k) == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))


def test_cumulative_logits_give_a_distribution_even_when_thresholds_cross():
    logits = np.array([[3.0, 0.0, -3.0], [-2.0, 1.0, 2.0], [10.0, 10.0, 10.0]])  # row 1: P(>1) < P(>2)
    probs = cumulative_to_levels(logits)
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs >= 0).all()
    assert probs[0].argmax() == 1 and probs[2].argmax() == 3


def test_coral_loss_prefers_the_true_level():
    recipe = recipe_from_dict({"task": "ordinal", "data": {"labels": LEVELS}})
    task = OrdinalTask(recipe)
    task.labels = LEVELS
    assert task.num_outputs == 3
    targets = torch.tensor([2])
    right = torch.tensor([[5.0, 5.0, -5.0]])  # above low, above mid, not above high -> "high"
    wrong = torch.tensor([[-5.0, -5.0, -5.0]])  # "low"
    assert task.loss(right, targets) < 0.01 < task.loss(wrong, targets)
    assert task.levels(right.numpy()).tolist() == [2]


def test_ordinal_train_evaluate_predict(tmp_path, tiny_model, capsys):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    make_levels(240, 0).to_csv(train, index=False)
    make_levels(40, 1).to_csv(test, index=False)
    recipe = tmp_path / "ordinal.yaml"
    recipe.write_text(
        json.dumps(
            {
                "task": "ordinal",
                "data": {"train": str(train), "label": "level", "id": "id", "labels": LEVELS, "max_length": 32},
                "model": {"name": str(tiny_model)},
                "train": {"epochs": 4, "batch_size": 16, "lr": 3e-3, "progress": False, "warmup_ratio": 0.0},
            }
        )
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    val = summary["validation"]
    assert {"qwk", "accuracy", "adjacent_accuracy", "mean_abs_level_error"} <= set(val)
    assert val["adjacent_accuracy"] >= val["accuracy"]
    # the level words are learnable: clearly better than chance agreement (QWK 0)
    assert val["qwk"] > 0.3
    assert (run / "plots" / "confusion_matrix.png").is_file()
    assert json.loads((run / "task.json").read_text())["labels"] == LEVELS

    assert main(["evaluate", str(run), "--input", str(test)]) == 0
    capsys.readouterr()
    sub_path, proba_path = tmp_path / "sub.csv", tmp_path / "proba.csv"
    assert main(["predict", str(run), "--input", str(test), "--output", str(sub_path)]) == 0
    assert main(["predict", str(run), "--input", str(test), "--output", str(proba_path), "--proba"]) == 0
    sub, proba = pd.read_csv(sub_path), pd.read_csv(proba_path)
    assert sub.columns.tolist() == ["id", "level"] and set(sub["level"]) <= set(LEVELS)
    assert proba.columns.tolist() == ["id", "level", *LEVELS] and proba["level"].tolist() == sub["level"].tolist()
    np.testing.assert_allclose(proba[LEVELS].sum(axis=1), 1.0, atol=1e-5)

    predictor = Predictor.load(run)
    df = pd.read_csv(test)
    assert predictor.predict(df) == sub["level"].tolist()
    metrics = predictor.evaluate(df)
    assert metrics["qwk"] == pytest.approx(
        cohen_kappa_score(df["level"].map(LEVELS.index), pd.Series(sub["level"]).map(LEVELS.index), weights="quadratic")
    )
