"""Regression: SMAPE losses by hand, target transforms, fusion features fitted on train only, end to end."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from textune import Predictor, load_recipe, train
from textune.cli import main
from textune.errors import TextuneError
from textune.recipe import recipe_from_dict
from textune.tasks.regression import RegressionTask, smape, smape_rows


def test_smape_by_hand_with_zeros():
    pred = np.array([100.0, 0.0, 0.0, 50.0])
    true = np.array([110.0, 0.0, 5.0, 0.0])
    # rows: 2*10/210, 0/0 -> 0, 2*5/5 = 2, 2*50/50 = 2
    expected = 100 * (20 / 210 + 0 + 2 + 2) / 4
    assert smape(pred, true) == pytest.approx(expected)
    rows_t = smape_rows(torch.tensor(pred), torch.tensor(true))
    np.testing.assert_allclose(rows_t.numpy(), [20 / 210, 0, 2, 2])


def _loss(kind: str, pred: list[float], true: list[float], gamma: float = 1.0) -> float:
    """The task's training loss on raw values (no transform, loss in original units: prediction = output)."""
    recipe = recipe_from_dict(
        {
            "task": "regression",
            "data": {"target": "price"},
            "regression": {"loss": kind, "loss_space": "original", "gamma": gamma},
        }
    )
    task = RegressionTask(recipe)  # unfitted: mean 0, std 1, so the model output is the prediction itself
    return float(task.loss(torch.tensor(pred), torch.tensor(true)))


def test_focal_smape_by_hand():
    # row 1: |110 - 100| / ((110 + 100) / 2) = 10 / 105 = 2/21;  row 2: |50 - 100| / ((50 + 100) / 2) = 50 / 75 = 2/3
    # gamma = 1: s * s**1 = s**2 -> 4/441 and 4/9 = 196/441; mean = (200/441) / 2 = 100/441; in percent 10000/441
    assert _loss("focal_smape", [110.0, 50.0], [100.0, 100.0], gamma=1.0) == pytest.approx(22.675736961, rel=1e-6)
    # gamma = 2: s**3 -> 8/9261 and 8/27 = 2744/9261; mean = 2752/9261 / 2 = 1376/9261; in percent 137600/9261
    assert _loss("focal_smape", [110.0, 50.0], [100.0, 100.0], gamma=2.0) == pytest.approx(14.858006695, rel=1e-6)
    # 0/0 counts as a perfect row: (0 + 2/3 * 2/3) / 2 = 2/9 -> 22.222...%
    assert _loss("focal_smape", [0.0, 50.0], [0.0, 100.0], gamma=1.0) == pytest.approx(22.222222222, rel=1e-6)


def test_smape_loss_is_in_percent_and_gamma_zero_is_plain_smape():
    # (2/21 + 2/3) / 2 = (2/21 + 14/21) / 2 = 8/21; in percent 800/21
    expected = 38.095238095
    assert _loss("smape", [110.0, 50.0], [100.0, 100.0]) == pytest.approx(expected, rel=1e-6)
    assert _loss("focal_smape", [110.0, 50.0], [100.0, 100.0], gamma=0.0) == pytest.approx(expected, rel=1e-6)
    assert smape(np.array([110.0, 50.0]), np.array([100.0, 100.0])) == pytest.approx(expected, rel=1e-9)


def test_focal_smape_gradient_is_finite_at_a_perfect_row():
    # s**gamma alone has an infinite slope at s = 0 for gamma < 1; the loss must not turn that into nan
    recipe = recipe_from_dict(
        {"task": "regression", "regression": {"loss": "focal_smape", "loss_space": "original", "gamma": 0.5}}
    )
    task = RegressionTask(recipe)
    out = torch.tensor([100.0, 50.0], requires_grad=True)
    task.loss(out, torch.tensor([100.0, 100.0])).backward()
    assert torch.isfinite(out.grad).all()


@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38])
def test_target_beyond_float32_is_a_bad_target(value):
    recipe = recipe_from_dict({"task": "regression", "data": {"target": "price"}})
    task = RegressionTask(recipe)
    df = pd.DataFrame({"price": [1.0, 2.0, value, 4.0]})
    with pytest.raises(
        TextuneError, match=r"1 .*target\(s\) in column 'price' of train \(data row 3 \(file line 4\); e\.g\. "
    ):
        task.targets(df, "train.csv", "train")
    # the largest float32 itself is still a number the model can be trained on
    df.loc[2, "price"] = float(np.finfo(np.float32).max)
    assert np.isfinite(task.targets(df, "train.csv", "train")).all()


@pytest.mark.parametrize("transform", ["none", "log1p", "log"])
def test_target_transform_round_trips(transform):
    recipe = recipe_from_dict(
        {"task": "regression", "data": {"target": "price"}, "regression": {"transform": transform}}
    )
    task = RegressionTask(recipe)
    df = pd.DataFrame({"price": [0.5, 3.0, 12.25, 999.0]})
    task.fit(df, "train.csv")
    y = task.targets(df, "train.csv", "train").astype(np.float64)
    fwd = {"none": lambda v: v, "log1p": np.log1p, "log": np.log}[transform]
    z = (fwd(y) - task.mean) / task.std
    np.testing.assert_allclose(task.to_original(z), y, rtol=1e-9)
    np.testing.assert_allclose(task.to_outputs(y), z, rtol=1e-12)  # what a ridge baseline is fitted on
    np.testing.assert_allclose(task.to_original(torch.tensor(z)).numpy(), y, rtol=1e-6)
    # clipping applies after the inverse
    task.cfg.clip_min = 1.0
    assert task.to_original(z).min() == pytest.approx(1.0)


def _price_rows(n: int, seed: int) -> pd.DataFrame:
    """Price grows with pack size and the 'premium' word; manufacturer and weight also carry signal."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pack = rng.choice([1, 2, 4, 6, 12])
        oz = rng.choice([4, 8, 12, 16])
        premium = rng.random() < 0.5
        brand = rng.choice(["Acme", "Bolt", "Crest"])
        price = round((2.0 + 0.4 * pack * oz / 4) * (3 if premium else 1), 2)
        text = f"Item Name: {'premium ' if premium else ''}snack {oz} Ounce (Pack of {pack})\nManufacturer: {brand}"
        rows.append(
            {
                "sample_id": f"p{i}",
                "catalog_content": text,
                "shelf": rng.randint(1, 5),
                "store": rng.choice(["north", "south"]),
                "price": price,
            }
        )
    return pd.DataFrame(rows)


def _recipe(tmp_path, tiny_model, **extra):
    train_csv = tmp_path / "train.csv"
    _price_rows(160, 0).to_csv(train_csv, index=False)
    raw = {
        "task": "regression",
        "data": {
            "train": str(train_csv),
            "text": "catalog_content",
            "target": "price",
            "id": "sample_id",
            "max_length": 32,
        },
        "model": {"name": str(tiny_model)},
        "regression": {"transform": "log1p", "loss": "huber", "clip_min": 0.01},
        "features": {
            "numeric": ["shelf"],
            "categorical": ["store"],
            "text_fields": ["Manufacturer"],
            "text_stats": True,
            "quantities": True,
            "head": {"widths": [16]},
        },
        "train": {"epochs": 4, "batch_size": 16, "lr": 3e-3, "progress": False, "warmup_ratio": 0.0},
    }
    for k, v in extra.items():
        raw[k].update(v)
    path = tmp_path / "price.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def test_fusion_regression_end_to_end(tmp_path, tiny_model):
    recipe = load_recipe(_recipe(tmp_path, tiny_model))
    run = train(recipe, out=tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    v = summary["validation"]
    assert set(v) >= {"smape", "mae", "rmse", "rmsle", "r2"}
    # the features determine the price: far better than predicting the train median
    valid = pd.read_csv(run / "predictions" / "validation.csv")
    median = pd.read_csv(tmp_path / "train.csv")["price"].median()
    assert v["smape"] < smape(np.full(len(valid), median), valid["price"].to_numpy()) - 5
    for name in ("pred_vs_true.png", "residuals.png", "loss.png"):
        assert (run / "plots" / name).is_file()
    assert (run / "model" / "fusion.json").is_file()

    # featurizer statistics come from the train rows only and are saved with the run
    stats = json.loads((run / "features.json").read_text())
    train_rows = pd.read_csv(tmp_path / "train.csv").set_index("sample_id")
    valid_ids = set(valid["sample_id"])
    fit_rows = train_rows.loc[[i for i in train_rows.index if i not in valid_ids]]
    shelf = stats["numeric_names"].index("shelf")
    assert stats["mean"][shelf] == pytest.approx(fit_rows["shelf"].mean())
    assert stats["std"][shelf] == pytest.approx(fit_rows["shelf"].std(ddof=0))

    # prediction reproduces the training-time features: same numbers as the run's own validation predictions
    predictor = Predictor.load(run)
    valid_in = train_rows.loc[valid["sample_id"]].reset_index()
    again = predictor.predict(valid_in)
    np.testing.assert_allclose(again, valid["pred_price"].to_numpy(), rtol=1e-5)

    # unseen category and missing numeric at predict time
    test = _price_rows(6, 9)
    test.loc[0, "store"] = "never-seen"
    test.loc[1, "shelf"] = None
    test = test.drop(columns=["price"])
    test_csv = tmp_path / "test.csv"
    test.to_csv(test_csv, index=False)
    out = tmp_path / "sub.csv"
    assert main(["predict", str(run), "--input", str(test_csv), "--output", str(out)]) == 0
    sub = pd.read_csv(out)
    assert sub.columns.tolist() == ["sample_id", "price"]
    assert sub["sample_id"].tolist() == test["sample_id"].tolist()
    assert np.isfinite(sub["price"]).all() and (sub["price"] >= 0.01).all()


def test_bad_target_is_one_clear_error(tmp_path, tiny_model, capsys):
    path = _recipe(tmp_path, tiny_model)
    df = pd.read_csv(tmp_path / "train.csv")
    df["price"] = df["price"].astype(object)
    df.loc[3, "price"] = "n/a"
    df.loc[7, "price"] = math.inf
    df.to_csv(tmp_path / "train.csv", index=False)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:")
    assert "column 'price'" in err and "file lines 5, 9" in err
    assert not (tmp_path / "run").exists()


def test_target_beyond_float32_stops_before_training(tmp_path, tiny_model, capsys):
    path = _recipe(tmp_path, tiny_model, train={"max_steps": 2})
    df = pd.read_csv(tmp_path / "train.csv")
    df.loc[10, "price"] = 1e39  # finite as a float64, inf once cast to the model's float32
    df.to_csv(tmp_path / "train.csv", index=False)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:")
    assert "column 'price'" in err and "(file line 12);" in err and "train.lr" not in err
    assert not (tmp_path / "run").exists()
