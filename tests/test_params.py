"""`textune params` counts what `textune train` trains: the task's outputs, the fitted fusion head, the LoRA rank."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import yaml

from textune import load_recipe, train
from textune.cli import main
from textune.errors import TextuneError
from textune.params import format_parameter_report, parameter_report

LEVELS = ["A1", "A2", "B1", "B2"]
WORDS = "cat dog sun tree house river stone cloud bread apple chair paper music water light".split()


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pack, brand = rng.choice([1, 2, 6]), rng.choice(["Acme", "Bolt", "Crest"])
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        rows.append(
            {
                "id": f"r{i}",
                "text": f"Item Name: {words} 8 Ounce (Pack of {pack})\nManufacturer: {brand}",
                "shelf": rng.randint(1, 5),
                "store": rng.choice(["north", "south", "east"]),
                "price": round(rng.uniform(1, 50), 2),
                "level": LEVELS[i % len(LEVELS)],
                "prompt": words,
                "response_a": " ".join(rng.choice(WORDS) for _ in range(4)),
                "response_b": " ".join(rng.choice(WORDS) for _ in range(5)),
                "winner_model_a": int(i % 3 == 0),
                "winner_model_b": int(i % 3 == 1),
                "winner_tie": int(i % 3 == 2),
            }
        )
    return rows


def _recipe(tmp_path, tiny_model, task: str, **sections) -> dict:
    train_csv = tmp_path / "train.csv"
    pd.DataFrame(_rows(80, 0)).to_csv(train_csv, index=False)
    data = {"train": str(train_csv), "id": "id", "max_length": 24}
    data.update(
        {"regression": {"text": "text", "target": "price"}, "ordinal": {"text": "text", "label": "level"}}.get(task, {})
    )
    raw = {
        "task": task,
        "data": data,
        "model": {"name": str(tiny_model)},
        "train": {"max_steps": 1, "batch_size": 16, "eval_every": 1, "progress": False, "warmup_ratio": 0.0},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return raw


def _trained(tmp_path, raw: dict) -> tuple[dict, dict]:
    """What `textune params` reports for the recipe, and what a real (one-step) training run recorded."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(path)
    rep = parameter_report(recipe)
    run = train(recipe, out=tmp_path / "run")
    return rep, json.loads((run / "summary.json").read_text())["parameters"]


def test_regression_with_features_and_a_lora_budget(tmp_path, tiny_model):
    raw = _recipe(
        tmp_path,
        tiny_model,
        "regression",
        regression={"transform": "log1p"},
        features={
            "numeric": ["shelf"],
            "categorical": ["store"],
            "text_fields": ["Manufacturer"],
            "text_stats": True,
            "quantities": True,
            "head": {"widths": [16]},
        },
        model={"peft": {"method": "lora", "r": 8, "alpha": 16, "budget": 3000}},
    )
    rep, trained = _trained(tmp_path, raw)
    assert rep["peft"]["r"] == trained["peft"]["r"]
    assert rep["trainable"] == trained["trainable"] <= 3000
    assert rep["total"] == trained["total"]
    assert rep["num_outputs"] == 1
    text = format_parameter_report(rep)
    assert "fusion head" in text and "regression" in text


def test_ordinal_coral_levels_from_the_data(tmp_path, tiny_model):
    # no data.labels and no --num-labels: the 4 levels in the training file, so 3 'above level k' outputs
    raw = _recipe(tmp_path, tiny_model, "ordinal", ordinal={"head": "coral"})
    rep, trained = _trained(tmp_path, raw)
    assert rep["trainable"] == trained["trainable"]
    assert rep["total"] == trained["total"]
    assert rep["num_outputs"] == 3


def test_preference_has_three_outputs(tmp_path, tiny_model):
    raw = _recipe(tmp_path, tiny_model, "preference", model={"peft": {"method": "lora", "r": 4, "alpha": 8}})
    rep, trained = _trained(tmp_path, raw)
    assert rep["trainable"] == trained["trainable"]
    assert rep["num_outputs"] == 3


def test_fusion_head_without_its_data_is_an_error_not_a_guess(tmp_path, tiny_model, capsys):
    raw = _recipe(tmp_path, tiny_model, "regression", features={"text_stats": True})
    raw["data"]["train"] = str(tmp_path / "absent.csv")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TextuneError, match=r"fusion head could not be sized.*absent\.csv"):
        parameter_report(load_recipe(path))
    assert main(["params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fusion head could not be sized" in err


def test_num_labels_sizes_a_classifier_without_data(tmp_path, tiny_model):
    raw = {"task": "classification", "model": {"name": str(tiny_model)}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    five, seven = (parameter_report(load_recipe(path), num_labels=k) for k in (5, 7))
    # the tiny model's classifier is a 32-wide linear layer: two more labels, 2 x (32 + 1) more weights
    assert seven["trainable"] - five["trainable"] == 2 * 33
    assert (five["num_outputs"], seven["num_outputs"]) == (5, 7)
