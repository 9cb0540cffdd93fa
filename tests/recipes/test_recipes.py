"""Every shipped recipe loads and validates (its data lives in ../shared, which tests must not need)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from textune.recipe import recipe_from_dict

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml")) + [ROOT / "examples" / "ag_news_demo.yaml"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    raw = yaml.safe_load(path.read_text())
    recipe = recipe_from_dict(raw, source=str(path), base=path.parent)
    assert recipe.data.train, "every recipe names its training data"
    assert Path(recipe.data.train).is_absolute()
    # the demo must ship its data; the other recipes point at ../shared/data
    if path.parent.name == "examples":
        assert Path(recipe.data.train).is_file()
    else:
        assert "shared/data" in recipe.data.train


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"ag_news.yaml", "ag_news_lora.yaml", "ag_news_demo.yaml"} <= names
