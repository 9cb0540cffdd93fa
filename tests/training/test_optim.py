"""textune's learning-rate schedules against the transformers functions whose formulas they copy."""

from __future__ import annotations

import pytest
import torch
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from textune.recipe import TrainConfig
from textune.training.optim import build_scheduler

REFERENCE = {
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
    "constant": lambda opt, warmup, total: get_constant_schedule_with_warmup(opt, warmup),
}


def _lrs(make, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make(opt)
    out = []
    for _ in range(steps + 2):  # two steps past the end: the decays stay at 0
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
@pytest.mark.parametrize(("ratio", "total"), [(0.0, 10), (0.1, 37), (0.5, 8), (0.9, 5)])
def test_schedules_equal_transformers(kind, ratio, total):
    cfg = TrainConfig(scheduler=kind, warmup_ratio=ratio)
    warmup = int(round(ratio * total))
    ours = _lrs(lambda opt: build_scheduler(opt, cfg, total), total)
    theirs = _lrs(lambda opt: REFERENCE[kind](opt, warmup, total), total)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert len(set(ours)) > 1 or kind == "constant" and ratio == 0.0  # the schedule really moves


@pytest.mark.parametrize("saved_by", ["textune", "transformers"])
def test_scheduler_state_resumes(saved_by):
    """A resumed run continues the schedule; checkpoints written before the schedules moved to textune hold
    transformers' scheduler state, which must load too."""
    cfg = TrainConfig(scheduler="cosine", warmup_ratio=0.2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, cfg, 20) if saved_by == "textune" else get_cosine_schedule_with_warmup(opt, 4, 20)
    for _ in range(9):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    resumed = build_scheduler(opt2, cfg, 20)
    resumed.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for _ in range(3):
        opt.step(), sched.step(), opt2.step(), resumed.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
    assert opt2.param_groups[0]["lr"] != 0.1  # past the warm-up, inside the decay
