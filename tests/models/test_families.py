"""Every encoder family the seed projects use trains, saves, loads and predicts (tiny models from a config)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _tiny import FAMILIES, make_tiny_model_dir

from textune import Predictor, load_recipe, train
from textune.models.peft import head_modules, target_modules


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_saves_loads_predicts(family, tmp_path, news, recipe_factory):
    model_dir = make_tiny_model_dir(tmp_path / family, family)
    recipe = load_recipe(recipe_factory(model={"name": str(model_dir)}, train={"max_steps": 3, "eval_every": 3}))
    run = train(recipe, out=tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3
    assert json.loads((run / "model" / "config.json").read_text())["model_type"] == family
    test = pd.read_csv(news["test"])
    predictor = Predictor.load(run)
    labels = predictor.predict(test)
    assert len(labels) == len(test) and set(labels) <= {"Business", "Sci/Tech", "Sports", "World"}
    proba = predictor.predict_proba(test)
    assert proba.sum(axis=1).round(5).eq(1).all()
    # the saved predictions of validation came from the same weights the predictor loaded
    valid = pd.read_csv(run / "predictions" / "validation.csv")
    assert len(valid) == summary["validation_rows"]


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_presets_exist_for_each_family(family, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(make_tiny_model_dir(tmp_path / family, family))
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = target_modules(model, "attention")
    assert targets and set(targets) <= names, (family, targets)
    assert head_modules(model), family
