"""Cross-validation, CV baselines and ensembles from the command line."""

from __future__ import annotations

import json

import pandas as pd
from _cli import fails

from textune.cli import main


def test_folds_baseline_ensemble_predict(recipe_factory, news, tmp_path, capsys):
    recipe = recipe_factory(train={"max_steps": 2})
    parent = tmp_path / "cv"
    assert main(["train", str(recipe), "--folds", "2", "--out", str(parent)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((parent / "summary.json").read_text())
    assert summary["kind"] == "cv" and set(summary["cv"]["accuracy"]) >= {"mean", "std", "oof"}
    assert f"accuracy: {summary['cv']['accuracy']['mean']:.4f} +- " in out
    oof = pd.read_csv(parent / "oof.csv")
    assert len(oof) == len(pd.read_csv(news["train"]))  # every training row predicted out of fold, once

    assert main(["baseline", str(recipe), "--kind", "tfidf", "--folds", "2", "--out", str(tmp_path / "b")]) == 0
    baseline = next((tmp_path / "b").iterdir())
    assert json.loads((baseline / "summary.json").read_text())["cv"]["accuracy"]["mean"] >= 0

    ensemble = tmp_path / "ens"
    assert main(["ensemble", str(parent), "--out", str(ensemble)]) == 0
    assert "member " in capsys.readouterr().out
    sub = tmp_path / "sub.csv"
    for model in (parent, ensemble):
        assert main(["predict", str(model), "--input", str(news["test"]), "--output", str(sub)]) == 0
        assert pd.read_csv(sub)["id"].tolist() == pd.read_csv(news["test"])["id"].tolist()


def test_one_fold_and_folds_with_processes_are_refused(recipe_factory, tmp_path, capsys):
    recipe = recipe_factory()
    assert "at least 2 folds" in fails(capsys, "train", recipe, "--folds", "1", "--out", tmp_path / "a")
    assert "--processes" in fails(capsys, "train", recipe, "--folds", "2", "--processes", "2", "--out", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_cv_parent_refuses_changed_data_and_single_run_resume(recipe_factory, news, tmp_path, capsys):
    """Finished folds trained on the first data: continuing on changed rows would score them on rows they saw."""
    recipe = recipe_factory(train={"max_steps": 2})
    parent = tmp_path / "cv"
    assert main(["train", str(recipe), "--folds", "2", "--out", str(parent)]) == 0
    before = (parent / "summary.json").read_bytes()
    assert "cross-validation or ensemble directory" in fails(capsys, "train", "--resume", parent, "--folds", "0")
    df = pd.read_csv(news["train"])
    df.loc[0, "title"] = "changed after the folds were cut"
    df.to_csv(news["train"], index=False)
    assert "folds were cut from other data" in fails(capsys, "train", recipe, "--folds", "2", "--out", parent)
    assert (parent / "summary.json").read_bytes() == before
