"""Shared fixtures: a tiny BERT built from a config (bundled tokenizer files), synthetic news-like data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

# Offline, always: a test that reaches for the hub must fail, not download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _tiny import make_tiny_model_dir  # noqa: E402

TOPICS = {
    "World": "government minister election president war embassy treaty parliament refugees border".split(),
    "Sports": "football match season coach league goal tennis championship player team".split(),
    "Business": "stocks shares profit market investors bank earnings company oil prices".split(),
    "Sci/Tech": "software internet computer space scientists microsoft phone research google chip".split(),
}
FILLER = "the a of in on and to with for after new said today by at from".split()


def make_news(n: int, seed: int = 0, with_id: bool = True) -> pd.DataFrame:
    """Balanced 4-class texts whose topic words make the label learnable by a tiny model in a few steps."""
    rng = random.Random(seed)
    labels = list(TOPICS)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(TOPICS[label]) for _ in range(rng.randint(3, 8))]
        words += [rng.choice(FILLER) for _ in range(rng.randint(2, 20))]
        rng.shuffle(words)
        row = {"title": " ".join(words[:3]).capitalize(), "description": " ".join(words[3:]), "label": label}
        if with_id:
            row = {"id": f"n{i:05d}", **row}
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TEXTUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "bert", "bert")


@pytest.fixture
def news(tmp_path) -> dict[str, Path]:
    paths = {}
    for name, n, seed in (("train", 240, 0), ("valid", 60, 1), ("test", 40, 2)):
        paths[name] = tmp_path / f"{name}.csv"
        make_news(n, seed).to_csv(paths[name], index=False)
    return paths


def write_recipe(path: Path, model_dir: Path, train_file: Path, **sections) -> Path:
    """A small, fast recipe: override any section with keyword dicts, e.g. train={"max_steps": 4}."""
    raw = {
        "task": "classification",
        "data": {
            "train": str(train_file),
            "text": "{title}. {description}",
            "label": "label",
            "id": "id",
            "max_length": 32,
        },
        "model": {"name": str(model_dir)},
        "train": {
            "epochs": 1,
            "batch_size": 16,
            "lr": 3e-3,
            "eval_every": 5,
            "log_every": 2,
            "progress": False,
            "warmup_ratio": 0.0,
            # Tests that compare numbers run in fp32 on every CPU: `auto` would pick bf16 on CPUs with native
            # bf16 and not elsewhere. The bf16 path has tests of its own (tests/training/test_precision.py).
            "precision": "fp32",
        },
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def recipe_factory(tmp_path, tiny_model, news):
    def make(name: str = "recipe.yaml", **sections) -> Path:
        return write_recipe(tmp_path / name, tiny_model, news["train"], **sections)

    return make
