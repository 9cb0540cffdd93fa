"""train.time_budget: stop cleanly with the best model and a resumable checkpoint; resumes finish the run."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from textune import load_recipe, train


def test_time_budget_stops_early_and_resumes_to_the_same_result(recipe_factory, tmp_path):
    base = {"max_steps": 3, "eval_every": 10}
    full = train(load_recipe(recipe_factory("full.yaml", train=base)), out=tmp_path / "full")
    # a budget far shorter than one step: every session runs exactly one step, then stops cleanly
    recipe = load_recipe(recipe_factory("budget.yaml", train={**base, "time_budget": "0.001s"}))
    run = train(recipe, out=tmp_path / "budget")
    summary = json.loads((run / "summary.json").read_text())
    state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    assert summary["steps"] == 1 and state["step"] == 1 and state["done"] is False
    assert (run / "model" / "model.safetensors").is_file()  # best-so-far weights, usable for predict
    for expected_step in (2, 3):
        train(resume=run)
        assert json.loads((run / "summary.json").read_text())["steps"] == expected_step
    final = json.loads((run / "summary.json").read_text())
    assert json.loads((run / "checkpoints" / "last" / "state.json").read_text())["done"] is True
    assert final["steps"] == json.loads((full / "summary.json").read_text())["steps"]
    # the weights reached are the same as without stops (the extra evaluations at each stop may pick another
    # "best" model, so the checkpoint's last weights are compared)
    a = load_file(run / "checkpoints" / "last" / "model.safetensors")
    b = load_file(full / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
