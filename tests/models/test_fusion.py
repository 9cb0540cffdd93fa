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


def test_lora_with_fusion_head_counts_it_and_merges(recipe_factory, news, tmp_path):
    df = pd.read_csv(news["train"])
    df["desk"] = df["label"].map({"World": "w", "Sports": "s", "Business": "b", "Sci/Tech": "t"})
    df.to_csv(news["train"], index=False)
    features = {"categorical": ["desk"], "head": {"widths": [16]}}
    recipe = load_recipe(
        recipe_factory(
            features=features, model={"peft": {"method": "lora", "r": 4, "alpha": 8}}, train={"epochs": 2, "lr": 1e-2}
        )
    )
    run = train(recipe, out=tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    table = {row["module"]: row["trainable"] for row in summary["parameters"]["modules"]}
    assert table["fusion"] > 0 and table["adapters (LoRA)"] > 0 and table["backbone"] == 0
    assert summary["parameters"]["trainable"] == table["fusion"] + table["adapters (LoRA)"]
    assert (run / "adapter" / "fusion.json").is_file() and (run / "model" / "fusion.json").is_file()
    valid = pd.read_csv(run / "predictions" / "validation.csv")
    rows = df.set_index("id").loc[valid["id"]].reset_index().drop(columns=["label"])
    assert Predictor.load(run).predict(rows) == valid["pred_label"].tolist()

    # under a budget the fusion head counts: the chosen rank leaves room for it
    budget = summary["parameters"]["trainable"] + 10
    recipe = load_recipe(
        recipe_factory(
            "b.yaml",
            features=features,
            model={"peft": {"method": "lora", "r": 4, "alpha": 8, "budget": budget}},
            train={"max_steps": 2},
        )
    )
    run2 = train(recipe, out=tmp_path / "run2")
    params = json.loads((run2 / "summary.json").read_text())["parameters"]
    assert params["peft"]["r"] == 4 and params["trainable"] <= budget


def test_frozen_embeddings_feed_the_fusion_head(recipe_factory, news, tmp_path, tiny_model):
    import os
    from pathlib import Path

    import numpy as np

    from textune.data.io import render_texts
    from textune.embed import embed_texts, load_encoder

    recipe = load_recipe(
        recipe_factory(
            features={"embeddings": {"model": str(tiny_model), "text": "description"}, "head": {"widths": [16]}},
            train={"max_steps": 4},
        )
    )
    run = train(recipe, out=tmp_path / "run")
    state = json.loads((run / "features.json").read_text())
    assert state["embedding_dims"] == [32]  # the tiny encoder's hidden size
    assert json.loads((run / "model" / "fusion.json").read_text())["numeric_dim"] == 32
    cached = list((Path(os.environ["TEXTUNE_CACHE"]) / "embeddings").glob("*.npy"))
    assert cached, "embeddings are cached on disk"
    # the features are the encoder's own (normalised, mean-pooled) embeddings of the chosen column
    valid = pd.read_csv(news["train"]).head(5)
    from textune.features import Featurizer

    feats, _ = Featurizer.from_dict(recipe.features, state).transform(valid, ["unused"] * 5, "x.csv")
    direct = embed_texts(
        load_encoder(str(tiny_model)), render_texts(valid, "description", "x.csv"), normalize=True, max_length=128
    )
    np.testing.assert_allclose(feats, direct, atol=1e-5)
    # and the predictor rebuilds them: the run's validation predictions come out again
    preds = pd.read_csv(run / "predictions" / "validation.csv")
    df = pd.read_csv(news["train"])
    rows = df.set_index("id").loc[preds["id"]].reset_index()
    assert Predictor.load(run).predict(rows) == preds["pred_label"].tolist()
