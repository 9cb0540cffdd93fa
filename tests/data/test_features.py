"""Built-in featurizers: quantities with units and packs, text statistics, fit-on-train-only transforms."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from textune.features import QUANTITY_FEATURES, Featurizer, quantities, text_field, text_stats
from textune.recipe import FeaturesConfig


def _q(text):
    return dict(zip(QUANTITY_FEATURES, quantities(text), strict=True))


def test_value_and_unit_lines_are_the_total():
    q = _q("Item Name: La Victoria Taco Sauce, 12 Ounce (Pack of 6)\nValue: 72.0\nUnit: Fl Oz\n")
    assert math.expm1(q["quantity_base"]) == pytest.approx(72 * 29.5735)
    assert math.expm1(q["pack_count"]) == pytest.approx(6)
    assert math.expm1(q["total_quantity"]) == pytest.approx(72 * 29.5735)  # Value: already counts the pack
    assert q["unit_volume"] == 1 and q["has_quantity"] == 1


def test_inline_quantity_times_pack():
    q = _q("Salerno Butter Cookies, 8 Ounce (Pack of 4)")
    assert math.expm1(q["quantity_base"]) == pytest.approx(8 * 28.3495)
    assert math.expm1(q["total_quantity"]) == pytest.approx(4 * 8 * 28.3495)
    assert q["unit_weight"] == 1


def test_no_quantity():
    q = _q("Wooden train set with lights")
    assert q["has_quantity"] == 0 and q["total_quantity"] == 0


def test_text_stats_and_fields():
    stats = text_stats("Hello World. Two sentences here!")
    assert math.expm1(stats[1]) == pytest.approx(5)  # words
    assert text_field("Item Name: x\nManufacturer: Hornby\n", "manufacturer") == "Hornby"
    assert text_field("Item Name: x", "Manufacturer") is None


def test_featurizer_fits_on_train_only():
    cfg = FeaturesConfig(numeric=["n"], categorical=["c"])
    train = pd.DataFrame({"n": [1.0, 3.0, None, 5.0], "c": ["a", "a", "b", "b"]})
    other = pd.DataFrame({"n": [1000.0, None], "c": ["a", "zzz"]})
    f = Featurizer(cfg).fit(train, [""] * 4, "train.csv")
    assert f.state["mean"] == [pytest.approx(3.0)]
    numeric, categorical = f.transform(other, [""] * 2, "test.csv")
    # standardised with train statistics (clipped at 10), missing -> 0 plus an indicator
    assert numeric[0, 0] == pytest.approx(10.0) and numeric[1, 0] == 0 and numeric[1, 1] == 1
    assert categorical[:, 0].tolist() == [1, 0]  # 'a' known, unseen -> bucket 0
    again = Featurizer.from_dict(cfg, f.to_dict()).transform(other, [""] * 2, "test.csv")
    np.testing.assert_array_equal(again[0], numeric)
