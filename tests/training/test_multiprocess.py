"""Data-parallel training in 2 CPU processes (torchrun, gloo): one run directory, every validation row once,
resume after a stop gives the same weights as an uninterrupted 2-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from textune.cli import main


def _train(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "textune.cli", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_two_processes(recipe_factory, tmp_path):
    recipe = recipe_factory(train={"max_steps": 2, "eval_every": 1, "num_threads": 1})
    _train([str(recipe), "--out", str(tmp_path / "full"), "--processes", "2"], tmp_path)
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    # 240 rows, 10% held out: all 24 validation rows, each exactly once
    valid = pd.read_csv(tmp_path / "full" / "predictions" / "validation.csv")
    assert summary["validation_rows"] == 24 and len(valid) == 24 and valid["id"].is_unique
    recs = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["split"] == "validation"] == [1, 2]  # one writer, no duplicates
    assert not (tmp_path / "full" / ".lock").exists()

    # stop after the first step (time budget), then resume in 2 processes: same weights as without the stop
    budget = recipe_factory(
        "budget.yaml", train={"max_steps": 2, "eval_every": 1, "num_threads": 1, "time_budget": "0.001s"}
    )
    _train([str(budget), "--out", str(tmp_path / "part"), "--processes", "2"], tmp_path)
    state = json.loads((tmp_path / "part" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 1 and not state["done"]
    _train(["--resume", str(tmp_path / "part"), "--processes", "2"], tmp_path)
    a = load_file(tmp_path / "part" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_accelerate_launch_with_the_documented_config(recipe_factory, tmp_path):
    # the command docs/scale_out.md gives, with the config file shipped in examples/accelerate/
    config = Path(__file__).parents[2] / "examples" / "accelerate" / "cpu_2_processes.yaml"
    # batch_size auto: each process probes, and all agree on the smallest size found
    auto = {"batch_size": "auto", "effective_batch_size": 16}
    recipe = recipe_factory(train={"max_steps": 2, "eval_every": 1, "num_threads": 1, **auto})
    # a free port rather than the config's 29500, which another program on the machine may hold
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    out = subprocess.run(
        [
            *launch,
            "--main_process_port",
            str(port),
            "-m",
            "textune.cli",
            "train",
            str(recipe),
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # both processes' output: when one dies, its own error is above the launcher's summary
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-8000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert summary["batching"]["rows_per_step"] == 16 and summary["batching"]["micro_batch_size"] == 16
    assert len(pd.read_csv(tmp_path / "run" / "predictions" / "validation.csv")) == summary["validation_rows"] == 24


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "asks for FSDP"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "asks for DeepSpeed"),
        ({"WORLD_SIZE": "2"}, "give --out RUN_DIR"),
    ],
)
def test_unsupported_launch_setups_fail_before_writing(recipe_factory, tmp_path, monkeypatch, capsys, env, message):
    recipe = recipe_factory(train={"max_steps": 1}, output={"dir": str(tmp_path / "runs")})
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
