"""The fusion head is not regression-specific: classification with tabular features trains and predicts."""

from __future__ import annotations

import json

import pandas as pd

from textune import Predictor, load_recipe, train


def test_classification_with_features(recipe_factory, news, tmp_path):
    df = pd.read_csv(news["train"])
    # a categorical column that gives the label away: the fusion head must learn to use it
    df["desk"] = df["label"].map({"World": "w", "Sports": "s", "Business": "b", "Sci/Tech": "t"})
    df.to_csv(news["train"], index=False)
    recipe = load_recipe(
        recipe_factory(
            features={"categorical": ["desk"], "text_stats": True, "head": {"widths": [16]}},
            train={"epochs": 3, "lr": 1e-2},
        )
    )
    run = train(recipe, out=tmp_path / "run")
    assert (run / "model" / "fusion.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["validation"]["accuracy"] >= 0.9
    # prediction rebuilds the same features: the run's own validation predictions come out again
    valid = pd.read_csv(run / "predictions" / "validation.csv")
    rows = df.set_index("id").loc[valid["id"]].reset_index().drop(columns=["label"])
    assert Predictor.load(run).predict(rows) == valid["pred_label"].tolist()
