"""One precision policy: what `auto` picks on each kind of hardware (probes injected, so every branch runs on any
machine), the bf16 path forced on CPU, and predictions that reproduce a run's own on the machine that trained."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import textune.device as device_mod
from textune import Predictor, load_recipe, train
from textune.device import cuda_has_native_bf16, resolve_precision
from textune.training.checkpoint import load_checkpoint, save_checkpoint

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("dev", "cpu_bf16", "gpu_bf16", "want"),
    [
        (CPU, True, False, "bf16"),  # Xeon with AVX512-BF16 / AMX
        (CPU, False, False, "no"),  # bf16 would be emulated, ~100x slower than fp32
        (CUDA, False, True, "bf16"),  # Ampere and later
        (CUDA, False, False, "fp16"),  # T4, P100, V100: fp16 with a gradient scaler
    ],
)
def test_auto_picks_what_the_hardware_computes_natively(monkeypatch, dev, cpu_bf16, gpu_bf16, want):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(device_mod, "cuda_has_native_bf16", lambda d=None: gpu_bf16)
    assert resolve_precision("auto", dev) == want
    assert resolve_precision("fp32", dev) == "no"  # an explicit choice is never second-guessed
    assert resolve_precision("bf16", dev) == "bf16"


def test_gpu_bf16_probe_does_not_count_emulation(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a T4 (emulated); the probe must ask without emulation."""
    asked: list[dict] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append({"including_emulation": including_emulation})
        return including_emulation  # a T4: bf16 only through emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert cuda_has_native_bf16() is False
    assert asked == [{"including_emulation": False}]


def test_fp16_scaler_state_travels_with_the_checkpoint(tmp_path):
    """fp16 runs (older GPUs) resume with the gradient scaler's scale and growth tracker, not a fresh scaler."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler.scale(torch.ones(()))  # a scaler allocates its state at its first use
    scaler.update(new_scale=256.0)
    save_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler, {"step": 3}, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=65536.0, growth_interval=2000)
    state = load_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler, scaler=fresh)
    assert state["step"] == 3
    assert fresh.get_scale() == 256.0 and fresh.get_growth_interval() == 7


def _validation_rows(recipe_path, run) -> pd.DataFrame:
    """The held-out validation rows, in the saved predictions' order (keyed by id)."""
    recipe = load_recipe(recipe_path)
    saved = pd.read_csv(run / "predictions" / "validation.csv")
    train_df = pd.read_csv(recipe.data.train)
    return train_df.set_index("id").loc[saved["id"]].reset_index(), saved


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predictor_reproduces_the_runs_own_predictions(recipe_factory, tmp_path, monkeypatch, precision):
    """`textune predict` on the validation rows gives predictions/validation.csv exactly: one inference path, and
    the precision the run evaluated with. bf16 is forced here whatever this CPU computes natively."""
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)  # so the Predictor keeps bf16 too
    path = recipe_factory(train={"max_steps": 6, "precision": precision})
    run = train(load_recipe(path), out=tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    want = {"fp32": "no", "bf16": "bf16"}[precision]
    assert summary["precision"] == manifest["precision"] == want
    assert all(np.isfinite(v) for v in summary["validation"].values())

    rows, saved = _validation_rows(path, run)
    predictor = Predictor.load(run)
    assert predictor.precision == want
    proba = predictor.predict_proba(rows)
    saved_proba = saved[[c for c in saved.columns if c.startswith("proba_")]].to_numpy()
    np.testing.assert_array_equal(proba.to_numpy(dtype=np.float64), saved_proba)
    assert predictor.predict(rows) == saved["pred_label"].tolist()


def test_bf16_run_predicts_in_fp32_where_bf16_would_be_emulated(recipe_factory, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    run = train(load_recipe(recipe_factory(train={"max_steps": 2, "precision": "bf16"})), out=tmp_path / "run")
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    assert Predictor.load(run).precision == "no"
    assert "predicting in fp32" in caplog.text
    assert Predictor.load(run, precision="bf16").precision == "bf16"  # the user may insist
