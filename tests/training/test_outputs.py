"""What a finished run leaves behind."""

from __future__ import annotations

import json

from textune import Predictor, load_recipe, train


def test_keep_checkpoint_false_drops_the_resume_state_of_a_complete_run(recipe_factory, tmp_path):
    """A finished run needs no optimizer state (about twice the model): keep_checkpoint: false removes it, and the
    run still loads and predicts."""
    kept = train(load_recipe(recipe_factory("a.yaml", train={"max_steps": 2})), out=tmp_path / "kept")
    dropped = train(
        load_recipe(recipe_factory("b.yaml", train={"max_steps": 2, "keep_checkpoint": False})), out=tmp_path / "drop"
    )
    assert (kept / "checkpoints" / "last" / "optimizer.pt").is_file()
    assert not (dropped / "checkpoints").exists()
    assert json.loads((dropped / "summary.json").read_text())["steps"] == 2
    assert Predictor.load(dropped).predict(["stocks rally"])[0] in {"Business", "Sci/Tech", "Sports", "World"}
