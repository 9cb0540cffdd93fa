"""Training steps by rows and by token budget: every row once per epoch, a pure function of (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from textune.data.batching import inference_batches, train_steps


@pytest.fixture
def lengths() -> np.ndarray:
    return np.random.default_rng(0).integers(5, 129, size=1003)


def _rows(steps) -> np.ndarray:
    return np.concatenate([mb for step in steps for mb in step])


def _padded_tokens(steps, lengths) -> int:
    return sum(len(mb) * int(lengths[mb].max()) for step in steps for mb in step)


@pytest.mark.parametrize("kw", [{}, {"group_by_length": False}, {"accum": 3}, {"max_tokens": 1000}])
def test_every_row_once_per_epoch_and_reproducible(lengths, kw):
    steps = train_steps(lengths, seed=7, epoch=2, rows=32, **kw)
    assert sorted(_rows(steps).tolist()) == list(range(len(lengths)))
    again = train_steps(lengths, seed=7, epoch=2, rows=32, **kw)
    assert all(np.array_equal(a, b) for s, t in zip(steps, again, strict=True) for a, b in zip(s, t, strict=True))
    other = train_steps(lengths, seed=7, epoch=3, rows=32, **kw)
    assert not np.array_equal(_rows(steps), _rows(other))


def test_rows_per_step_do_not_depend_on_micro_batches(lengths):
    # batch_size: auto may split a step differently on another device; the data in each step must not change
    whole = train_steps(lengths, seed=1, epoch=0, rows=32, accum=1)
    split = train_steps(lengths, seed=1, epoch=0, rows=32, accum=3)
    assert len(whole) == len(split) == 32  # ceil(1003 / 32)
    for a, b in zip(whole, split, strict=True):
        assert len(b) == (3 if len(a[0]) >= 3 else len(a[0]))
        assert np.array_equal(a[0], np.concatenate(b))
        assert max(len(mb) for mb in b) <= 11  # ceil(32 / 3)


def test_grouping_removes_padding(lengths):
    grouped = train_steps(lengths, seed=0, epoch=0, rows=32)
    shuffled = train_steps(lengths, seed=0, epoch=0, rows=32, group_by_length=False)
    assert _padded_tokens(grouped, lengths) < 0.7 * _padded_tokens(shuffled, lengths)


def test_token_budget(lengths):
    budget = 2048
    counts = set()
    for epoch in range(4):
        steps = train_steps(lengths, seed=3, epoch=epoch, max_tokens=budget, accum=2)
        counts.add(len(steps))
        micro = [mb for step in steps for mb in step]
        assert all(len(mb) * lengths[mb].max() <= budget for mb in micro)
        assert all(1 <= len(step) <= 2 for step in steps)
        # greedy cutting: only the last cut (the shortest rows left over) may have room for one more row
        assert sum((len(mb) + 1) * lengths[mb].max() <= budget for mb in micro) <= 1
    assert len(counts) == 1  # the same number of steps every epoch: the schedule is known up front
    # short texts make bigger batches
    micro = [mb for step in train_steps(lengths, seed=3, epoch=0, max_tokens=budget) for mb in step]
    sizes = {int(lengths[mb].max()): len(mb) for mb in micro}
    assert sizes[min(sizes)] > sizes[max(sizes)]


def test_inference_batches_longest_first(lengths):
    batches = inference_batches(lengths, 100)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert lengths[batches[0]].min() >= lengths[batches[1]].max()
