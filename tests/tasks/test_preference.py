"""Pairwise preference: JSON-list cells, swap augmentation, symmetric averaging, calibration, the CLI path."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from textune import Predictor
from textune.cli import main
from textune.data.tokenize import encode_fields
from textune.errors import TextuneError
from textune.models.backbone import load_tokenizer
from textune.recipe import recipe_from_dict
from textune.tasks.preference import PROBA_COLUMNS, PreferenceTask, parse_cells

GOOD = "clear correct helpful detailed accurate polite".split()
BAD = "wrong rude useless vague broken confusing".split()
TOPIC = "explain write summarize translate list describe".split()


def make_pairs(n: int, seed: int, json_cells: bool = False) -> pd.DataFrame:
    """The better response holds 'good' words; a tie is two responses of the same kind."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        outcome = ("a", "b", "tie")[i % 3]
        kinds = {"a": (GOOD, BAD), "b": (BAD, GOOD), "tie": (GOOD, GOOD) if i % 2 else (BAD, BAD)}[outcome]
        ra, rb = (" ".join(rng.choice(k) for _ in range(rng.randint(3, 8))) for k in kinds)
        prompt = " ".join(rng.choice(TOPIC) for _ in range(4))
        if json_cells:
            prompt, ra, rb = (json.dumps([x]) for x in (prompt, ra, rb))
        rows.append(
            {
                "id": f"p{i}",
                "prompt": prompt,
                "response_a": ra,
                "response_b": rb,
                "winner_model_a": int(outcome == "a"),
                "winner_model_b": int(outcome == "b"),
                "winner_tie": int(outcome == "tie"),
            }
        )
    return pd.DataFrame(rows)


def _task(tiny_model=None, **data) -> PreferenceTask:
    raw = {"task": "preference", "data": {"max_length": 32, **data}}
    if tiny_model is not None:
        raw["model"] = {"name": str(tiny_model)}
    return PreferenceTask(recipe_from_dict(raw))


def test_cells_parse_plain_text_and_json_lists():
    plain = pd.Series(["hello", "[1] is a footnote", None])
    assert parse_cells(plain, "prompt", "f.csv") == ["hello", "[1] is a footnote", ""]
    turns = pd.Series(['["first turn", "second turn"]', "[null]", '["only"]', ""])
    assert parse_cells(turns, "prompt", "f.csv") == ["first turn\n\nsecond turn", "", "only", ""]


@pytest.mark.parametrize(("cell", "why"), [('["unterminated', "not a valid JSON"), ("[1, 2]", "not a list of str")])
def test_malformed_json_cell_names_row_and_column(cell, why):
    col = pd.Series(['["fine"]', '["also fine"]', cell])
    with pytest.raises(TextuneError, match=rf"data\.csv: data row 3 \(file line 4\), column 'response_b': .*{why}"):
        parse_cells(col, "response_b", "data.csv")


def test_malformed_cell_in_a_training_file_is_a_clean_cli_error(tmp_path, tiny_model, capsys):
    df = make_pairs(30, 0, json_cells=True)
    df.loc[7, "response_a"] = '["cut off'
    train = tmp_path / "train.csv"
    df.to_csv(train, index=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        json.dumps({"task": "preference", "data": {"train": str(train)}, "model": {"name": str(tiny_model)}})
    )
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "data row 8 (file line 9), column 'response_a'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_targets_from_one_hot_columns_or_one_label_column():
    task = _task()
    df = make_pairs(6, 0)
    assert task.targets(df, "f", "train").tolist() == [0, 1, 2, 0, 1, 2]
    labelled = pd.DataFrame({"label": ["A", "tie", "model_b"]})
    assert _task().targets(labelled, "f", "train").tolist() == [0, 2, 1]
    df.loc[2, "winner_model_a"] = 1  # two winners
    with pytest.raises(TextuneError, match=r"data row 3 \(file line 4\)"):
        task.targets(df, "f", "train")


def test_swap_augmentation_and_token_budget(tiny_model):
    task = _task(tiny_model, field_shares=[0.2, 0.4, 0.4])
    tokenizer = load_tokenizer(str(tiny_model))
    df = make_pairs(6, 0)
    df.loc[0, "prompt"] = "explain " * 200  # a huge prompt must not push the responses out
    df.loc[0, "response_a"] = "helpful " * 200
    enc = task.encode(tokenizer, df, train=True)
    assert len(enc) == 12 and enc.doc.tolist() == list(range(6)) * 2 and enc.variant.tolist() == [0] * 6 + [1] * 6
    targets = task.row_targets(task.targets(df, "f", "train"), enc)
    assert targets.tolist() == [0, 1, 2, 0, 1, 2] + [1, 0, 2, 1, 0, 2]  # a and b swap, tie stays
    swapped, _ = encode_fields(
        tokenizer,
        [df["prompt"].tolist(), df["response_b"].tolist(), df["response_a"].tolist()],
        32,
        task.encoding_policy(),
    )
    np.testing.assert_array_equal(enc.row(6), swapped.row(0))
    tokens = tokenizer.convert_ids_to_tokens(enc.row(0).tolist())
    assert len(tokens) <= 32
    b_ids = tokenizer(df.loc[0, "response_b"], add_special_tokens=False)["input_ids"]
    assert tokens.count("helpful") >= 5  # response a keeps its share
    assert enc.row(0)[-len(b_ids) - 1 : -1].tolist() == b_ids  # short response b is kept whole
    assert len(task.encode(tokenizer, df, train=False)) == 12  # symmetric evaluation encodes both orders


def test_calibration_lowers_log_loss_of_overconfident_outputs():
    task = _task()
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), targets] += 1.0
    logits *= 6  # right more often than not, but far too sure
    fit = task.fit_calibration(logits, targets)
    assert fit["temperature"] > 1.5
    assert fit["log_loss_after"] < fit["log_loss_before"]
    m = task.metrics(logits, targets)
    assert m["log_loss"] == pytest.approx(fit["log_loss_after"]) and m["log_loss_uncalibrated"] > m["log_loss"]
    np.testing.assert_allclose(task.predictions(logits, proba=True).sum(axis=1), 1.0)


def test_reported_calibrated_log_loss_is_cross_fitted_not_in_sample():
    """A temperature fitted and scored on the same rows flatters itself; the validation figure reported is
    cross-fitted (each row scored with a temperature fitted on the other folds), so it is the higher one."""
    task = _task()
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 3, 100)
    logits = rng.normal(size=(100, 3))
    logits[np.arange(100), targets] += 1.0
    logits *= 3  # some signal, far too sure
    fit = task.fit_calibration(logits, targets)
    task.temperature = 1.0
    reported = task.calibrate(logits, targets)
    assert reported["log_loss"] > fit["log_loss_after"] + 0.01
    assert reported["log_loss_uncalibrated"] == pytest.approx(fit["log_loss_before"])
    # the temperature kept for prediction is the one fitted on every validation row
    assert task.temperature == pytest.approx(fit["temperature"])


def test_preference_train_predict_symmetric(tmp_path, tiny_model, capsys):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    make_pairs(150, 0).to_csv(train, index=False)
    make_pairs(24, 1, json_cells=True).to_csv(test, index=False)
    recipe = tmp_path / "pref.yaml"
    recipe.write_text(
        json.dumps(
            {
                "task": "preference",
                "data": {"train": str(train), "id": "id", "max_length": 32, "valid_fraction": 0.2},
                "model": {"name": str(tiny_model)},
                "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "progress": False, "warmup_ratio": 0.0},
            }
        )
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    val = summary["validation"]
    assert {"log_loss", "log_loss_uncalibrated", "accuracy", "f1_a", "f1_b", "f1_tie"} <= set(val)
    assert val["log_loss"] > 0 and val["log_loss_uncalibrated"] > 0  # cross-fitted and raw: either may be lower
    state = json.loads((run / "task.json").read_text())
    assert state["temperature"] > 0 and state["label_source"] == list(PROBA_COLUMNS)

    sub_path = tmp_path / "submission.csv"
    assert main(["predict", str(run), "--input", str(test), "--output", str(sub_path)]) == 0
    sub = pd.read_csv(sub_path)
    assert sub.columns.tolist() == ["id", *PROBA_COLUMNS]
    np.testing.assert_allclose(sub[list(PROBA_COLUMNS)].sum(axis=1), 1.0, atol=1e-6)
    assert main(["evaluate", str(run), "--input", str(test)]) == 0
    capsys.readouterr()

    # symmetric averaging: the prediction for (b, a) is the mirror image of the one for (a, b)
    predictor = Predictor.load(run)
    df = pd.read_csv(test)
    flipped = df.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    np.testing.assert_allclose(predictor.predict_proba(df), sub[list(PROBA_COLUMNS)].to_numpy(), atol=1e-6)
    predictor.task.temperature = 1.0  # the fitted temperature may flatten a barely trained model's outputs
    p = predictor.predict_proba(df).to_numpy()
    q = predictor.predict_proba(flipped).to_numpy()
    np.testing.assert_allclose(q, p[:, [1, 0, 2]], atol=1e-6)
    assert set(predictor.predict(df)) <= {"a", "b", "tie"}

    # the check above can fail: one order alone is not a mirror image (the model does see a before b)
    predictor.task.recipe.preference.symmetric_eval = False
    one_order = predictor.predict_proba(df).to_numpy()
    assert np.abs(predictor.predict_proba(flipped).to_numpy() - one_order[:, [1, 0, 2]]).max() > 1e-6


def test_a_cv_baseline_is_scored_with_the_calibration_a_fine_tune_gets(tmp_path, tiny_model):
    """Fine-tuned folds report temperature-calibrated (cross-fitted) log loss; a baseline reported raw beside them
    would lose on calibration alone (an over-confident TF-IDF model scored worse than the class priors)."""
    from textune.baseline import run_baselines

    train = tmp_path / "train.csv"
    make_pairs(120, 0).to_csv(train, index=False)
    raw = {"task": "preference", "data": {"train": str(train), "id": "id"}, "model": {"name": str(tiny_model)}}
    (out,) = run_baselines(recipe_from_dict(raw), ["tfidf"], out=tmp_path / "b", folds=3)
    summary = json.loads((out / "summary.json").read_text())
    folds = [f["validation"] for f in summary["fold_summaries"]]
    # TF-IDF + logreg on 80 rows is over-confident: the folds' figures are the calibrated ones
    assert np.mean([f["log_loss"] for f in folds]) < np.mean([f["log_loss_uncalibrated"] for f in folds]) - 0.05
    assert summary["cv"]["log_loss"]["mean"] == pytest.approx(np.mean([f["log_loss"] for f in folds]))
    assert summary["validation"]["log_loss"] < summary["validation"]["log_loss_uncalibrated"]
    assert json.loads((out / "task.json").read_text())["temperature"] != 1.0  # kept for the baseline's test rows


def test_the_gbdt_baseline_reads_the_length_difference_of_the_responses(tmp_path, tiny_model):
    """Longer answers win: with the winner decided by length alone, trees on the per-field statistics and their
    a-minus-b differences find it; statistics of the joined text cannot (it is the same text either way)."""
    from textune.baseline import run_baselines

    rng = random.Random(0)
    rows = []
    for i in range(150):
        # lengths overlap between rows (a winner of 8 words, a loser of 9 elsewhere): only a-minus-b tells
        n_a, n_b = rng.sample(range(2, 20), 2)
        ra, rb = (" ".join(rng.choice(GOOD + BAD) for _ in range(n)) for n in (n_a, n_b))
        a_wins = n_a > n_b
        rows.append(
            {
                "id": f"p{i}",
                "prompt": "explain",
                "response_a": ra,
                "response_b": rb,
                "winner_model_a": int(a_wins),
                "winner_model_b": int(not a_wins),
                "winner_tie": 0,
            }
        )
    train = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(train, index=False)
    raw = {"task": "preference", "data": {"train": str(train), "id": "id"}, "model": {"name": str(tiny_model)}}
    (out,) = run_baselines(recipe_from_dict(raw), ["gbdt"], out=tmp_path / "b", folds=3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["validation"]["accuracy"] > 0.9


@pytest.mark.parametrize("folds", [0, 3])
def test_a_baseline_scores_the_same_alone_or_after_another_one(tmp_path, tiny_model, folds):
    """Baselines run together share one read of the data (and its task): the first one's fitted temperature must
    not flow into the next one's figures."""
    from textune.baseline import run_baselines

    train = tmp_path / "train.csv"
    make_pairs(120, 0).to_csv(train, index=False)
    raw = {"task": "preference", "data": {"train": str(train), "id": "id"}, "model": {"name": str(tiny_model)}}
    _, after = run_baselines(recipe_from_dict(raw), ["tfidf", "embedding"], out=tmp_path / "both", folds=folds)
    (alone,) = run_baselines(recipe_from_dict(raw), ["embedding"], out=tmp_path / "alone", folds=folds)
    scores = [json.loads((d / "summary.json").read_text())["validation"] for d in (after, alone)]
    assert scores[0] == pytest.approx(scores[1])
