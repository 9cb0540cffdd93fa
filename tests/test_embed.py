"""textune embed: pooled hidden states equal a direct computation, prefixes, formats, runs, errors."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from textune.cli import main
from textune.embed import embed_texts, load_encoder, resolve_prefix
from textune.recipe import dump_recipe, recipe_from_dict
from textune.run import write_manifest

TEXTS = [
    "stocks rose",
    "The football season starts with a match between the league leaders and a new team today",
    "software",
    "Scientists said the space research chip from google was new",
    "",
]


@functools.lru_cache(maxsize=4)
def _reference(model_dir):
    return AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()


def direct(model_dir, texts, max_length=32, pooling="mean"):
    """Hidden states computed one text at a time (no padding at all), pooled by hand."""
    tok, model = _reference(str(model_dir))
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt", truncation=True, max_length=max_length)
            h = model(**enc).last_hidden_state[0]
            out.append((h.mean(0) if pooling == "mean" else h[0]).numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return load_encoder(tiny_model, device="cpu")


def test_mean_pooling_equals_direct_hidden_states(encoder, tiny_model):
    # batch_size 2 mixes lengths inside batches, so padding must be masked out of the mean
    got = embed_texts(encoder, TEXTS, max_length=32, batch_size=2)
    want = direct(tiny_model, TEXTS)
    assert got.shape == (len(TEXTS), 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the rows differ, so a row landing in the wrong place would have been caught
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_cls_pooling_and_normalisation(encoder, tiny_model):
    cls = embed_texts(encoder, TEXTS, max_length=32, pooling="cls", batch_size=3)
    np.testing.assert_allclose(cls, direct(tiny_model, TEXTS, pooling="cls"), atol=1e-5)
    unit = embed_texts(encoder, TEXTS, max_length=32, normalize=True)
    mean = direct(tiny_model, TEXTS)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)


def test_prefixes_are_applied(encoder, tiny_model):
    assert resolve_prefix("query") == "query: "
    assert resolve_prefix("passage") == "passage: "
    assert resolve_prefix("Represent this: ") == "Represent this: "
    texts = TEXTS[:3]
    for name, marker in (("query", "query: "), ("passage", "passage: ")):
        got = embed_texts(encoder, texts, max_length=32, prefix=name)
        np.testing.assert_allclose(got, direct(tiny_model, [marker + t for t in texts]), atol=1e-5)
    plain = embed_texts(encoder, texts, max_length=32)
    assert np.abs(embed_texts(encoder, texts, max_length=32, prefix="query") - plain).max() > 1e-3


def test_cli_writes_parquet_and_npy_keyed_by_id(tiny_model, news, tmp_path, encoder):
    test = pd.read_csv(news["test"])
    want = embed_texts(encoder, (test["title"] + ". " + test["description"]).tolist(), max_length=32)

    out = tmp_path / "emb.parquet"
    args = ["embed", str(tiny_model), "--input", str(news["test"]), "--text", "{title}. {description}"]
    assert main([*args, "--output", str(out), "--max-length", "32", "--no-progress"]) == 0
    table = pd.read_parquet(out)
    assert table.columns.tolist() == ["id"] + [f"emb_{i}" for i in range(32)]
    assert table["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(table.iloc[:, 1:].to_numpy(), want, atol=1e-5)

    npy = tmp_path / "emb.npy"
    assert main([*args, "--output", str(npy), "--max-length", "32", "--no-progress", "--normalize"]) == 0
    arr = np.load(npy)
    np.testing.assert_allclose(arr, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    assert pd.read_csv(tmp_path / "emb.ids.csv")["id"].tolist() == test["id"].tolist()


def _fake_run(tmp_path, tiny_model, train_file):
    """A verified run directory whose encoder weights differ from the tiny base model (as after fine-tuning)."""
    run = tmp_path / "run"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=4)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.mul_(-1.5)
    model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(run / "model")
    raw = {"data": {"train": str(train_file), "text": "{title}: {description}", "id": "id", "max_length": 16}}
    (run / "recipe.yaml").write_text(dump_recipe(recipe_from_dict(raw)))
    (run / "task.json").write_text(json.dumps({"task": "classification", "labels": ["a", "b", "c", "d"]}))
    write_manifest(run, seed=0, data_hashes={}, device="cpu")
    return run, model


def test_run_directory_embeds_with_its_own_encoder_and_defaults(tiny_model, news, tmp_path):
    run, model = _fake_run(tmp_path, tiny_model, news["train"])
    out = tmp_path / "run_emb.parquet"
    # no --text, --id or --max-length: the run's data.text, data.id and max_length (16) apply
    assert main(["embed", str(run), "--input", str(news["test"]), "--output", str(out), "--no-progress"]) == 0
    table = pd.read_parquet(out)
    test = pd.read_csv(news["test"])
    texts = (test["title"] + ": " + test["description"]).tolist()
    assert table["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(table.iloc[:, 1:].to_numpy(), direct(run / "model", texts, max_length=16), atol=1e-5)
    # ...and that is not what the untouched base model gives
    assert np.abs(table.iloc[:, 1:].to_numpy() - direct(tiny_model, texts, max_length=16)).max() > 1e-2


def test_embed_errors_name_the_fix_and_write_nothing(tiny_model, news, tmp_path, capsys):
    base = ["embed", str(tiny_model), "--input", str(news["test"]), "--no-progress"]
    bad = [
        ([*base, "--text", "title", "--output", str(tmp_path / "e.csv")], ".parquet or .npy"),
        ([*base, "--output", str(tmp_path / "e.npy")], "--text"),
        ([*base, "--text", "{title}. {body}", "--output", str(tmp_path / "e.npy")], "'body'"),
        ([*base, "--text", "title", "--id", "label", "--output", str(tmp_path / "e.npy")], "duplicate id"),
        ([*base, "--text", "title", "--pooling", "max", "--output", str(tmp_path / "e.npy")], None),
    ]
    for argv, needle in bad:
        if needle is None:  # argparse rejects the choice itself
            with pytest.raises(SystemExit):
                main(argv)
            continue
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["train.csv", "valid.csv", "test.csv"])
