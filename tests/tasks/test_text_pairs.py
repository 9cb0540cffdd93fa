"""Text pairs: a true sentence pair (token_type_ids), each pair truncation policy, and the CLI/Predictor path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from textune import Predictor
from textune.cli import main
from textune.data.tokenize import allocate, encode_fields
from textune.errors import TextuneError
from textune.models.backbone import load_tokenizer
from textune.recipe import recipe_from_dict
from textune.tasks import ClassificationTask

FIRST = "short question here"
SECOND = " ".join(f"word{i}" for i in range(40))


def _tokens(tokenizer, enc, i=0):
    return tokenizer.convert_ids_to_tokens(enc.row(i).tolist())


def test_allocate_is_longest_first_with_equal_shares_and_gives_unused_share_away():
    assert allocate([3, 100], 20, [1, 1]) == [3, 17]
    assert allocate([50, 100], 20, [1, 1]) == [10, 10]
    assert allocate([100, 100, 5], 45, [0.2, 0.4, 0.4]) == [13, 27, 5]  # b's unused share goes to prompt and a
    assert sum(allocate([7, 9, 11], 13, [1, 2, 3])) == 13


@pytest.mark.parametrize("policy", ["longest_first", "only_first", "only_second", "share"])
def test_pair_policies(tiny_model, policy):
    tok = load_tokenizer(str(tiny_model))
    enc, _ = encode_fields(tok, [[FIRST], [SECOND]], 24, {"pair": policy, "shares": [0.5, 0.5]}, use_cache=False)
    tokens = _tokens(tok, enc)
    types = enc.type_row(0).tolist()
    assert len(tokens) == 24 and tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
    first_len = tokens.index("[SEP]") - 1
    # the segment ids mark the second text: 0 through the first [SEP], then 1
    assert types == [0] * (first_len + 2) + [1] * (24 - first_len - 2)
    if policy in ("longest_first", "only_second", "share"):
        assert tokens[1 : first_len + 1] == tok.tokenize(FIRST)  # the short first text is kept whole
    else:  # only_first: cut the first text; the second alone is over budget, so it is cut too
        assert first_len == 0


def test_cache_key_covers_the_pair_and_its_policy(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    long_first = " ".join(["alpha"] * 30)
    a, _ = encode_fields(tok, [[long_first], [SECOND]], 24, {"pair": "only_first"})
    b, hit = encode_fields(tok, [[long_first], [SECOND]], 24, {"pair": "only_second"})
    assert not hit and not np.array_equal(a.row(0), b.row(0))
    c, hit = encode_fields(tok, [[long_first], [SECOND + " more"]], 24, {"pair": "only_second"})
    assert not hit
    _, hit = encode_fields(tok, [[long_first], [SECOND]], 24, {"pair": "only_second"})
    assert hit


def test_pair_classification_train_and_predict(tmp_path, tiny_model, capsys):
    rows = []
    for i in range(96):
        same = i % 2 == 0
        q = ["stocks bank profit", "football goal coach", "software chip phone"][i % 3]
        a = q if same else ["football goal coach", "software chip phone", "stocks bank profit"][i % 3]
        rows.append({"id": i, "question": q, "answer": a, "label": "same" if same else "different"})
    train = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(train, index=False)
    recipe = tmp_path / "pairs.yaml"
    recipe.write_text(
        json.dumps(
            {
                "task": "classification",
                "data": {"train": str(train), "text": "question", "text_pair": "answer", "id": "id", "max_length": 16},
                "model": {"name": str(tiny_model)},
                "train": {"max_steps": 4, "batch_size": 16, "progress": False},
            }
        )
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    sub = tmp_path / "sub.csv"
    assert main(["predict", str(run), "--input", str(train), "--output", str(sub), "--proba"]) == 0
    capsys.readouterr()
    predictor = Predictor.load(run)
    df = pd.read_csv(train)
    np.testing.assert_allclose(predictor.predict_proba(df), pd.read_csv(sub)[["different", "same"]], atol=1e-5)
    # the pair is read as a pair: swapping question and answer changes the segment ids, so the outputs
    enc = predictor.task.encode(predictor.tokenizer, df.head(2))
    assert enc.type_ids is not None and enc.type_row(1).max() == 1
    with pytest.raises(TextuneError, match="data.text_pair"):
        predictor.predict(["a text without its pair"])


def test_pair_columns_are_required(tmp_path, tiny_model):
    recipe = recipe_from_dict({"task": "classification", "data": {"text": "q", "text_pair": "{a} {b}"}})
    assert ClassificationTask(recipe).input_columns() == {
        "q": "data.text",
        "a": "data.text_pair",
        "b": "data.text_pair",
    }


def test_pair_shares_must_be_two(tiny_model):
    recipe = recipe_from_dict(
        {"task": "classification", "data": {"text_pair": "b", "pair_truncation": "share", "field_shares": [1, 1, 1]}}
    )
    with pytest.raises(TextuneError, match="data.field_shares: a text pair takes 2"):
        ClassificationTask(recipe).encoding_policy()
