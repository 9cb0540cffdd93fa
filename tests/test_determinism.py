"""Same recipe, same seed, same machine (CPU): identical metrics, predictions and weight bytes."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_news, write_recipe

from textune.cli import main

TIMINGS = ("samples_per_s",)


def _metrics_log(run: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in recs]


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_model, capsys):
    make_news(120).to_csv(tmp_path / "train.csv", index=False)
    make_news(30, seed=7).to_csv(tmp_path / "test.csv", index=False)
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        tiny_model,
        tmp_path / "train.csv",
        data={"test": str(tmp_path / "test.csv")},
        model={"dropout": 0.1},  # dropout draws random numbers every step: they must be seeded too
        train={"max_steps": 6, "batch_size": 8, "eval_every": 3, "warmup_ratio": 0.1},
    )
    runs = {}
    for name, seed in (("a", 42), ("b", 42), ("c", 7)):
        runs[name] = tmp_path / name
        assert main(["train", str(recipe), "--out", str(runs[name]), "--set", f"train.seed={seed}"]) == 0
    capsys.readouterr()
    a, b, c = runs["a"], runs["b"], runs["c"]

    summary_a, summary_b = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    for key in ("validation", "test", "best_step", "steps", "parameters"):
        assert summary_a[key] == summary_b[key], key
    assert _metrics_log(a) == _metrics_log(b)
    for rel in (
        "predictions/validation.csv",
        "predictions/test.csv",
        "model/model.safetensors",
        "checkpoints/last/model.safetensors",
        "checkpoints/last/optimizer.pt",
        "task.json",
    ):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    manifest_a, manifest_b = (json.loads((r / "manifest.json").read_text()) for r in (a, b))
    assert manifest_a["files_sha256"] == manifest_b["files_sha256"]

    # the control: another seed changes the split and the initialisation, so the weights differ
    assert (a / "model" / "model.safetensors").read_bytes() != (c / "model" / "model.safetensors").read_bytes()
    assert _metrics_log(a) != _metrics_log(c)
