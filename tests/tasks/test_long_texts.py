"""Long texts: head, tail and head_tail truncation, through training and prediction."""

from __future__ import annotations

import numpy as np
import pytest

from textune import Predictor
from textune.cli import main
from textune.data.tokenize import encode_fields
from textune.models.backbone import load_tokenizer

TEXT = " ".join(f"w{i}" for i in range(60))


@pytest.mark.parametrize(
    ("side", "head", "kept"),
    [
        ("head", None, list(range(0, 8))),
        ("tail", None, list(range(52, 60))),
        ("head_tail", 3, [0, 1, 2, *range(55, 60)]),
    ],
)
def test_truncation_keeps_the_chosen_tokens(tiny_model, side, head, kept):
    tok = load_tokenizer(str(tiny_model))
    words = TEXT.split()
    per_word = len(tok.tokenize(words[0]))
    assert all(len(tok.tokenize(w)) == per_word for w in words)  # every word costs the same, so cuts are exact
    n = 8 * per_word + 2
    enc, _ = encode_fields(tok, [[TEXT]], n, {"side": side, "head": head * per_word if head else None}, use_cache=False)
    tokens = tok.convert_ids_to_tokens(enc.row(0).tolist())
    expected = [t for i in kept for t in tok.tokenize(words[i])]
    assert tokens == ["[CLS]", *expected, "[SEP]"]


def test_head_tail_default_head_is_a_quarter(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    enc, _ = encode_fields(tok, [[TEXT]], 42, {"side": "head_tail", "head": None}, use_cache=False)
    tokens = tok.convert_ids_to_tokens(enc.row(0).tolist())
    assert len(tokens) == 42 and tokens[1 : 1 + 10] == tok.tokenize(TEXT)[:10]  # 40 // 4 from the start
    assert tokens[11:-1] == tok.tokenize(TEXT)[-30:]


def test_tail_truncation_is_used_by_the_predictor(recipe_factory, tmp_path):
    recipe = recipe_factory(data={"truncation": "tail", "max_length": 12}, train={"max_steps": 3, "eval_every": 3})
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    predictor = Predictor.load(run)
    # texts that differ only at the start look the same to a tail-truncating model
    ending = " stocks profit market bank shares earnings" * 3
    p = predictor.predict_proba(["football goal coach league match " * 4 + ending, "software chip " * 9 + ending])
    np.testing.assert_allclose(p.iloc[0], p.iloc[1], atol=1e-6)


def test_windows_overlap_by_the_stride_and_cover_the_text(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    words = TEXT.split()
    per_word = len(tok.tokenize(words[0]))
    size = 8 * per_word  # content tokens per window
    enc, _ = encode_fields(
        tok, [[TEXT, "w1"]], size + 2, {"side": "chunks", "stride": 2 * per_word, "max_chunks": None}, use_cache=False
    )
    assert enc.doc.tolist() == [0] * 10 + [1]  # 60 words, windows of 8 moving by 6: starts 0, 6, ..., 48, 52
    windows = [tok.convert_ids_to_tokens(enc.row(i).tolist())[1:-1] for i in range(10)]
    assert all(len(w) == size for w in windows)
    assert windows[1][: 2 * per_word] == windows[0][-2 * per_word :]  # consecutive windows share the stride
    assert windows[0][:per_word] == tok.tokenize("w0") and windows[-1][-per_word:] == tok.tokenize("w59")
    capped, _ = encode_fields(
        tok, [[TEXT]], size + 2, {"side": "chunks", "stride": 2 * per_word, "max_chunks": 3}, use_cache=False
    )
    assert len(capped) == 3 and capped.row(2).tolist() == enc.row(9).tolist()  # first, middle, last


def test_pooling_gives_one_row_per_text_with_the_mean_probability():
    from textune.tasks.base import pool_windows

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3))
    doc = np.array([0, 0, 0, 1, 2])  # text 0 split into 3 windows
    soft = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pooled = pool_windows(logits, doc, "mean_proba", "softmax")
    assert pooled.shape == (3, 3)
    p = np.exp(pooled) / np.exp(pooled).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p[0], soft[:3].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(p[1:], soft[3:], rtol=1e-5)
    np.testing.assert_allclose(pool_windows(logits, doc, "mean_logits", "softmax")[0], logits[:3].mean(axis=0), 1e-6)
    sig = 1 / (1 + np.exp(-pool_windows(logits, doc, "mean_proba", "sigmoid")))
    np.testing.assert_allclose(sig[0], (1 / (1 + np.exp(-logits[:3]))).mean(axis=0), rtol=1e-5)


def test_chunks_train_on_windows_and_predict_one_row_per_text(recipe_factory, news, tmp_path):
    import pandas as pd

    from textune.models.infer import infer_logits, pad_id_of

    recipe = recipe_factory(
        data={"truncation": "chunks", "max_length": 10, "stride": 2, "validation": str(news["valid"])},
        train={"max_steps": 3, "eval_every": 3},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    valid = pd.read_csv(news["valid"])
    assert len(pd.read_csv(run / "predictions" / "validation.csv")) == len(valid)
    predictor = Predictor.load(run)
    long_text = "football goal coach league match season player team " * 4
    proba = predictor.predict_proba([long_text, "stocks"])
    assert proba.shape == (2, 4)  # one prediction per text, however many windows
    enc = predictor.task.encode(predictor.tokenizer, [long_text])
    assert len(enc) > 3 and set(enc.doc.tolist()) == {0}
    windows = infer_logits(predictor.model, enc, 8, predictor.device, pad_id_of(predictor.tokenizer))
    soft = np.exp(windows) / np.exp(windows).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba.iloc[0].to_numpy(), soft.mean(axis=0), rtol=1e-4)
    train = predictor.task.encode(predictor.tokenizer, pd.read_csv(news["train"]), train=True)
    assert len(train) > 240  # windows, each trained with its text's label


def test_training_targets_follow_the_windows(tiny_model, news):
    import pandas as pd

    from textune.prepare import Split
    from textune.recipe import recipe_from_dict
    from textune.tasks import ClassificationTask

    recipe = recipe_from_dict({"data": {"text": "description", "truncation": "chunks", "max_length": 8}})
    task = ClassificationTask(recipe)
    df = pd.read_csv(news["train"]).head(20)
    split = Split("train", "f", df, [], targets=np.arange(20))
    task.encode_split(load_tokenizer(str(tiny_model)), split)
    assert len(split.encoded) > 20 and len(split.targets) == len(split.encoded)
    np.testing.assert_array_equal(split.targets, split.encoded.doc)  # each window carries its text's target


def test_check_reports_windows_under_chunks(recipe_factory, capsys):
    recipe = recipe_factory(data={"truncation": "chunks", "max_length": 10, "stride": 0, "text": "description"})
    assert main(["check", str(recipe)]) == 0
    out = capsys.readouterr().out
    windows, texts = out.split("train: ")[1].split("chunks: ")[1].split(" windows of 10 tokens for ")
    # every text yields at least one window and long ones several
    assert int(texts.split()[0]) == 216 and int(windows) > 216
