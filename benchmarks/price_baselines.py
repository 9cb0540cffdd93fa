"""Baselines for the product-price recipe on its own split: the train median, and a text-free model on the
recipe's engineered features (gradient-boosted trees on exactly the features the fusion head sees).

    python benchmarks/price_baselines.py recipes/product_price.yaml [--set data.max_rows=3000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from textune.features import Featurizer, attach_features
from textune.prepare import prepare
from textune.recipe import load_recipe
from textune.tasks.regression import smape


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.set)
    splits = prepare(recipe, tokens=False, features=False).splits
    train, valid = splits["train"], splits["validation"]
    out = {"train_rows": len(train.df), "validation_rows": len(valid.df)}

    median = float(np.median(train.targets))
    out["median_smape"] = smape(np.full(len(valid.targets), median), valid.targets)

    t0 = time.perf_counter()
    attach_features(Featurizer(recipe.features), splits)
    x_tr = np.hstack([train.extras["numeric"], train.extras["categorical"]])
    x_va = np.hstack([valid.extras["numeric"], valid.extras["categorical"]])
    # category codes enter as ordinal numbers: HistGradientBoosting's native categories stop at 255 levels
    model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=recipe.train.seed)
    model.fit(x_tr, np.log1p(train.targets))
    pred = np.expm1(model.predict(x_va)).clip(min=recipe.regression.clip_min or None)
    out["features_only_smape"] = smape(pred, valid.targets)
    out["features_only_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
