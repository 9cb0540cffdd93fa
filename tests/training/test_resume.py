"""Resume equivalence: a run stopped after N steps and resumed ends exactly like an uninterrupted one (CPU)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from safetensors.torch import load_file

from textune import load_recipe, train
from textune.training.loop import Callback


class CrashAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state["step"] == self.step:
            raise RuntimeError("simulated crash")


def _final(run):
    summary = json.loads((run / "summary.json").read_text())
    preds = pd.read_csv(run / "predictions" / "validation.csv")
    weights = load_file(run / "model" / "model.safetensors")
    return summary, preds, weights


@pytest.mark.parametrize(
    "batching",
    [{}, {"grad_accum": 2}, {"max_tokens": 200}, {"batch_size": "auto", "effective_batch_size": 16}],
    ids=["rows", "grad_accum", "max_tokens", "auto"],
)
def test_resume_equals_uninterrupted(recipe_factory, tmp_path, batching):
    # 216 train rows / 16 = 14 steps per epoch (7 with grad_accum 2); 2 epochs; the crash falls mid-epoch and
    # between checkpoints (every 3 steps), so resume must replay from step 3 or 6 with the same batches and dropout.
    recipe = load_recipe(
        recipe_factory(
            train={"epochs": 2, "checkpoint_every": 3, "eval_every": 4, **batching},
            model={"dropout": 0.2},
        )
    )
    full = train(recipe, out=tmp_path / "full")
    crash_step = 5 if "grad_accum" in batching else 8
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, out=tmp_path / "part", callbacks=[CrashAt(crash_step)])
    assert not (tmp_path / "part" / "summary.json").exists()
    state = json.loads((tmp_path / "part" / "checkpoints" / "last" / "state.json").read_text())
    assert 0 < state["step"] < crash_step + 1
    resumed = train(out=None, resume=tmp_path / "part")

    s_full, p_full, w_full = _final(full)
    s_res, p_res, w_res = _final(resumed)
    assert s_res["validation"] == s_full["validation"]
    assert s_res["steps"] == s_full["steps"] and s_res["best_step"] == s_full["best_step"]
    pd.testing.assert_frame_equal(p_res, p_full)
    assert w_res.keys() == w_full.keys()
    for k in w_full:
        assert (w_res[k] == w_full[k]).all(), k
    # the metric log has no duplicated steps from the replayed part
    recs = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["split"], r["step"]) for r in recs]
    assert len(keys) == len(set(keys))
    assert keys == [
        (r["split"], r["step"])
        for r in (json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines())
    ]
