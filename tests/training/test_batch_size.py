"""``train.batch_size: auto``: the probe finds a size that fits, leaves no trace, and keeps the rows per step."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import textune.training.setup as loop  # trial_step: the batch-size probe lives in setup
from textune import load_recipe, train
from textune.errors import TextuneError
from textune.training.batch_size import find_micro_batch


def _oom_above(limit: int, tried: list[int]):
    def try_step(n: int) -> None:
        tried.append(n)
        if n > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return try_step


def test_find_micro_batch_shrinks_until_it_fits():
    tried: list[int] = []
    assert find_micro_batch(32, _oom_above(10, tried), "cuda:0") == 9
    assert tried == [32, 28, 25, 22, 19, 17, 15, 13, 11, 9]  # Accelerate's 10% steps


def test_find_micro_batch_gives_up_with_a_fix_and_passes_other_errors():
    with pytest.raises(
        TextuneError, match="train.batch_size: auto.*lower data.max_length or set train.gradient_checkpointing"
    ):
        find_micro_batch(8, _oom_above(0, []), "cuda:0")

    def broken(n: int) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        find_micro_batch(8, broken, "cpu")


def _weights(run):
    return load_file(run / "model" / "model.safetensors"), json.loads((run / "summary.json").read_text())


def test_auto_that_fits_trains_exactly_like_the_explicit_size(recipe_factory, tmp_path):
    # the trial step runs forward, backward and an optimizer step: it must leave weights, optimizer and dropout
    # streams as they were, so the run is byte-identical to one given the size
    explicit = train(load_recipe(recipe_factory("a.yaml")), out=tmp_path / "explicit")
    auto = train(
        load_recipe(recipe_factory("b.yaml", train={"batch_size": "auto", "effective_batch_size": 16})),
        out=tmp_path / "auto",
    )
    (w_exp, s_exp), (w_auto, s_auto) = _weights(explicit), _weights(auto)
    assert s_auto["batching"] == {
        "rows_per_step": 16,
        "micro_batch_size": 16,
        "micro_batches_per_step": 1,
        "max_tokens": None,
    }
    assert s_auto["steps"] == s_exp["steps"] == 14
    for k in w_exp:
        assert torch.equal(w_exp[k], w_auto[k]), k


def test_auto_after_out_of_memory_accumulates_to_the_same_step(recipe_factory, tmp_path, monkeypatch):
    tried: list[int] = []
    real = loop.trial_step

    def fake(*args, **kwargs):
        step = real(*args, **kwargs)

        def guarded(n: int) -> None:
            _oom_above(5, tried)(n)
            step(n)

        return guarded

    monkeypatch.setattr(loop, "trial_step", fake)
    no_dropout = {"dropout": 0.0}
    explicit = train(load_recipe(recipe_factory("a.yaml", model=no_dropout)), out=tmp_path / "explicit")
    auto = train(
        load_recipe(
            recipe_factory("b.yaml", model=no_dropout, train={"batch_size": "auto", "effective_batch_size": 16})
        ),
        out=tmp_path / "auto",
    )
    assert tried == [16, 14, 12, 10, 9, 8, 7, 6, 5]
    (w_exp, s_exp), (w_auto, s_auto) = _weights(explicit), _weights(auto)
    # 5 rows fit: 16 rows per step become 4 micro-batches of 4
    assert s_auto["batching"]["micro_batch_size"] == 4
    assert s_auto["batching"]["micro_batches_per_step"] == 4
    assert s_auto["steps"] == s_exp["steps"]
    # same rows in every step, gradients averaged over the step: the same training up to float rounding
    for k in w_exp:
        torch.testing.assert_close(w_auto[k], w_exp[k], rtol=1e-4, atol=1e-5)
    assert s_auto["validation"]["accuracy"] == s_exp["validation"]["accuracy"]
