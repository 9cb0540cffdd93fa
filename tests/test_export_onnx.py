"""``textune export --onnx [--int8]``: ONNX Runtime reproduces the PyTorch model's logits (fp32 within 1e-4; int8
close), on padded batches of any size and length; models with tabular features are refused cleanly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import fails, train_small_run
from conftest import make_news, write_recipe

from textune.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from textune.export import export_run  # noqa: E402
from textune.models.build import load_model_dir  # noqa: E402
from textune.onnx_export import INT8_FILE, ONNX_FILE, onnx_logits, onnx_session  # noqa: E402


def _train(base: Path, tiny_model: Path, **sections) -> Path:
    recipe = write_recipe(base / "recipe.yaml", tiny_model, base / "train.csv", train={"max_steps": 2}, **sections)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTUNE_CACHE", str(base / "cache"))
        assert main(["train", str(recipe), "--out", str(base / "run")]) == 0
    return base / "run"


@pytest.fixture(scope="module")
def sensitive_model(tmp_path_factory) -> Path:
    """The tiny BERT with a 30x pooler and a classifier head initialised at std 0.5: the random tiny encoder's pooled
    vector hardly varies between rows, and at the usual scale its logits differ by less than the tolerance (a
    parity test that could not fail). Here rows, and padding, move the logits by hundreds of times 1e-4."""
    from _tiny import make_tiny_model_dir
    from transformers import AutoModel

    path = make_tiny_model_dir(tmp_path_factory.mktemp("sensitive") / "bert", "bert")
    encoder = AutoModel.from_pretrained(path)
    with torch.no_grad():
        encoder.pooler.dense.weight.mul_(30.0)
    encoder.config.initializer_range = 0.5
    encoder.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sensitive_model) -> dict[str, Path]:
    """Three 2-step runs: the architecture's head, textune's head (mean pooling, FusionModel), tabular features."""
    plain = train_small_run(tmp_path_factory.mktemp("plain"), sensitive_model)["run"]
    out = {"plain": plain}
    for name, sections in (("mean", {"model": {"pooling": "mean"}}), ("features", {"features": {"text_stats": True}})):
        base = tmp_path_factory.mktemp(name)
        make_news(60).to_csv(base / "train.csv", index=False)
        out[name] = _train(base, sensitive_model, **sections)
    return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    """The plain and the mean-pooling run exported with --onnx --int8 (once: the exporter takes seconds)."""
    base = tmp_path_factory.mktemp("exported")
    return {name: export_run(runs[name], base / name, onnx=True, int8=True) for name in ("plain", "mean")}


def _batch(model_dir: Path, n: int = 12, max_length: int = 32, seed: int = 5) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = make_news(n, seed=seed)
    texts = (rows["title"] + ". " + rows["description"]).tolist()
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np"))


def _torch_logits(model_dir: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    model = load_model_dir(model_dir).float().eval()
    takes = {"input_ids", "attention_mask", "token_type_ids"}
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v).long() for k, v in batch.items() if k in takes}).logits.numpy()


ATOL = 1e-4


@pytest.mark.parametrize("name", ["plain", "mean"])
def test_onnx_fp32_matches_pytorch(exported, name):
    out = exported[name]
    batch = _batch(out)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 3 and lengths.min() < batch["input_ids"].shape[1]  # padding really present
    session = onnx_session(out / ONNX_FILE)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    expected = _torch_logits(out, batch)
    # the comparison can fail: the logits vary across rows, and ignoring the padding would move them, by far more
    # than the tolerance
    assert np.ptp(expected, axis=0).min() > 50 * ATOL
    unmasked = _torch_logits(out, {**batch, "attention_mask": np.ones_like(batch["attention_mask"])})
    assert np.abs(unmasked - expected).max() > 50 * ATOL
    got = onnx_logits(session, batch)
    assert got.shape == expected.shape == (12, 4)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    # the axes are dynamic: one row, and rows longer than the batch the exporter traced with
    for other in (_batch(out, n=1, seed=7), _batch(out, n=3, max_length=128, seed=8)):
        np.testing.assert_allclose(onnx_logits(session, other), _torch_logits(out, other), atol=ATOL, rtol=0)
    meta = json.loads((out / "textune.json").read_text())
    assert meta["onnx"]["model"] == ONNX_FILE and meta["onnx"]["output"] == "logits"


@pytest.mark.parametrize("name", ["plain", "mean"])
def test_onnx_int8_is_smaller_and_close(exported, name):
    out = exported[name]
    fp32, int8 = out / ONNX_FILE, out / INT8_FILE
    assert int8.is_file() and int8.stat().st_size < 0.5 * fp32.stat().st_size
    batch = _batch(out, n=32)
    expected = _torch_logits(out, batch)
    got = onnx_logits(int8, batch)
    # int8 weights move the logits by a little, far less than their spread across rows
    error = np.abs(got - expected).max()
    assert error < 0.1 * np.ptp(expected) + 1e-3, (error, np.ptp(expected))
    if name == "mean":
        # labels: only where the model is decisive. The "plain" fixture (30x pooler, 2 steps) spreads its logits
        # across rows but leaves every row's top two within ~0.05 of each other, below int8's ~0.2 error: its labels
        # are ties that int8 may turn either way, and which way depends on the training run's random stream
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.75


def test_onnx_refuses_tabular_features(runs, tmp_path, capsys):
    out = tmp_path / "features"
    line = fails(capsys, "export", runs["features"], "--out", out, "--onnx")
    assert "tabular features" in line and "drop --onnx" in line
    assert not out.exists()
    assert main(["export", str(runs["features"]), "--out", str(out)]) == 0  # without --onnx: as before
    assert not (out / ONNX_FILE).exists()


def test_onnx_cli_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "deploy"
    assert main(["export", str(runs["plain"]), "--out", str(out), "--onnx"]) == 0
    assert "model.onnx" in capsys.readouterr().out
    assert (out / ONNX_FILE).is_file() and not (out / INT8_FILE).exists()
    assert (out / "config.json").is_file() and (out / "textune.json").is_file()  # the usual export is all there
    batch = _batch(out, n=4)
    np.testing.assert_allclose(onnx_logits(out / ONNX_FILE, batch), _torch_logits(out, batch), atol=ATOL, rtol=0)


def test_onnx_bad_flags_and_missing_packages(runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x"
    assert "add --onnx" in fails(capsys, "export", runs["plain"], "--out", out, "--int8")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    line = fails(capsys, "export", runs["plain"], "--out", out, "--onnx")
    assert "pip install 'textune[onnx]'" in line
    assert not out.exists()


@pytest.mark.parametrize("name", ["plain", "mean"])
def test_predict_with_the_onnx_engine_equals_torch(exported, runs, name, tmp_path, capsys):
    """``textune predict EXPORT --engine onnx``: textune's whole path (template, truncation, softmax, calibration)
    around the ONNX graph: the PyTorch engine's probabilities within 1e-4; int8 writes the same rows."""
    import pandas as pd

    rows = make_news(30, seed=9)
    rows.to_csv(tmp_path / "in.csv", index=False)
    tables = {}
    for engine in ("torch", "onnx", "onnx-int8"):
        out = tmp_path / f"{engine}.csv"
        args = ["predict", str(exported[name]), "--input", str(tmp_path / "in.csv"), "--output", str(out)]
        assert main([*args, "--proba", "--engine", engine, "--precision", "fp32"]) == 0
        tables[engine] = pd.read_csv(out)
    probs = [c for c in tables["torch"].columns if c not in ("id", "label")]
    assert len(probs) == 4 and tables["torch"]["id"].tolist() == rows["id"].tolist()
    np.testing.assert_allclose(tables["onnx"][probs], tables["torch"][probs], atol=1e-4, rtol=0)
    assert tables["onnx"]["label"].tolist() == tables["torch"]["label"].tolist()
    assert tables["onnx-int8"]["id"].tolist() == rows["id"].tolist()
    np.testing.assert_allclose(tables["onnx-int8"][probs].sum(axis=1), 1.0, atol=1e-5)
    # the int8 graph, not the fp32 one: close to it, not equal
    gap = np.abs(tables["onnx-int8"][probs].to_numpy() - tables["onnx"][probs].to_numpy()).max()
    assert 0 < gap < 0.2, gap
    if name == "mean":  # the "plain" fixture's labels are near-ties (see test_onnx_int8_is_smaller_and_close)
        assert (tables["onnx-int8"]["label"] == tables["torch"]["label"]).mean() >= 0.7


def test_onnx_engine_needs_an_onnx_export(runs, exported, tmp_path, capsys):
    make_news(5).to_csv(tmp_path / "in.csv", index=False)
    base = ["--input", tmp_path / "in.csv", "--output", tmp_path / "out.csv"]
    line = fails(capsys, "predict", runs["plain"], *base, "--engine", "onnx")
    assert "has no model.onnx" in line and "textune export" in line
    assert "drop it" in fails(capsys, "predict", exported["plain"], *base, "--engine", "onnx", "--precision", "bf16")
    assert not (tmp_path / "out.csv").exists()
