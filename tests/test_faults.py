"""Faults: ``kill -9`` at six points of a real ``textune train`` process, a second trainer on the same run
directory, a non-finite loss and Ctrl-C. After each, the run directory is consistent, ``--resume`` works, and
the finished run equals an uninterrupted one with the same seed (CPU)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_news, write_recipe
from safetensors.torch import load_file

from textune.cli import main
from textune.errors import TextuneError
from textune.training import loop

# A child process that imports textune once, then forks one trainer per job: each forked trainer runs the real
# CLI (`textune.cli.main`) with one fault armed by (kind, at): the at-th time it reaches that point it SIGKILLs
# itself (what an outside `kill -9` landing exactly there does, but reproducible), or for "pause" it stops
# there so the test can act on a live trainer. Forking a fresh interpreter that has only imported modules is
# safe, and it saves the ~5-15 s of importing torch and transformers per kill.
DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys, time, traceback
    from pathlib import Path

    import textune._atomic as atomic
    import textune.training.checkpoint as ck
    import textune.training.loop as loop
    from textune.cli import main


    def arm(kind, at, marker):
        seen = [0]

        def due():
            seen[0] += 1
            return seen[0] == at

        def die():
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        if kind == "ckpt-weights":  # inside a checkpoint write: weights in the temp dir, optimizer not yet
            real_save_file = ck.save_file

            def save_file(*a, **k):
                real_save_file(*a, **k)
                if due():
                    die()

            ck.save_file = save_file
        elif kind in ("ckpt-swap", "model-swap"):  # inside replace_dir: old copy moved aside, new not in place
            target = "last" if kind == "ckpt-swap" else "model"
            real_replace = atomic.replace_dir

            def replace_dir(src, dst):
                if dst.name == target and dst.exists() and due():
                    os.replace(dst, atomic.aside(dst))
                    die()
                real_replace(src, dst)

            atomic.replace_dir = replace_dir
        elif kind == "torn-log":  # half of a metrics.jsonl line written
            real_append = atomic.append_jsonl

            def append_jsonl(path, record):
                if due():
                    with open(path, "a") as f:
                        f.write('{"step": 999, "split": "tr')
                    die()
                real_append(path, record)

            atomic.append_jsonl = append_jsonl
        elif kind == "pause":  # a live trainer holding the lock, just after a checkpoint
            real_ckpt = loop.save_checkpoint

            def save_checkpoint(*a, **k):
                real_ckpt(*a, **k)
                if due():
                    Path(marker).write_text(str(os.getpid()))
                    time.sleep(600)

            loop.save_checkpoint = save_checkpoint
        elif kind == "finish":  # predictions and summary written, manifest not yet

            def write_manifest(*a, **k):
                die()

            import textune.training.outputs as outputs

            outputs.write_manifest = write_manifest


    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            arm(job["fault"], job["at"], job.get("marker"))
            try:
                code = main(job["args"])
            except BaseException:
                traceback.print_exc()
                code = 99
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
    """
)


class Trainers:
    """The test's handle on the forking driver above."""

    def __init__(self, base: Path, cache: Path):
        self.base = base
        (base / "driver.py").write_text(DRIVER)
        self.proc = subprocess.Popen(
            [sys.executable, str(base / "driver.py")],
            env={**os.environ, "TEXTUNE_CACHE": str(cache)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(base / "driver.log", "w"),
            text=True,
        )
        self.n = 0

    def _read(self, key: str) -> int:
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        assert line, f"driver gave no answer; see {self.base / 'driver.log'}"
        return json.loads(line)[key]

    def start(self, args: list[str], fault: str, at: int = 1, marker: Path | None = None) -> int:
        """Forks a trainer running ``textune <args>`` with the fault armed; returns its pid."""
        self.n += 1
        self.log = self.base / f"trainer-{self.n}-{fault}.log"
        job = {"args": args, "fault": fault, "at": at, "log": str(self.log), "marker": str(marker)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._read("pid")

    def wait(self) -> int:
        """The exit status of the last trainer (negative: killed by that signal)."""
        return self._read("status")

    def killed(self, args: list[str], fault: str, at: int = 1) -> None:
        self.start(args, fault, at)
        status = self.wait()
        assert status == -signal.SIGKILL, (fault, status, self.log.read_text()[-2000:])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


TRAIN = {
    "epochs": 1,
    "batch_size": 8,
    "eval_every": 4,
    "checkpoint_every": 2,
    "log_every": 2,
    "warmup_ratio": 0.0,
    "num_threads": 1,  # the test machine's cores are shared: one thread per trainer wastes less time waiting
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model) -> Iterator[dict]:
    """Data, recipe and the uninterrupted reference run (108 train rows / 8 = 14 steps; checkpoints every 2,
    evaluations every 4)."""
    base = tmp_path_factory.mktemp("faults")
    make_news(120).to_csv(base / "train.csv", index=False)
    recipe = write_recipe(base / "recipe.yaml", tiny_model, base / "train.csv", train=TRAIN, model={"dropout": 0.1})
    # started first: its imports overlap with the reference run below
    trainers = Trainers(base, base / "cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTUNE_CACHE", str(base / "cache"))
        assert main(["train", str(recipe), "--out", str(base / "full")]) == 0
    yield {"base": base, "recipe": recipe, "full": base / "full", "trainers": trainers}
    trainers.close()


def _ckpt_step(run: Path, name: str = "last") -> int:
    return json.loads((run / "checkpoints" / name / "state.json").read_text())["step"]


def _same_as_reference(run: Path, full: Path) -> None:
    s_run, s_full = (json.loads((d / "summary.json").read_text()) for d in (run, full))
    assert s_run["validation"] == s_full["validation"]
    assert s_full["steps"] == 14
    assert (s_run["steps"], s_run["best_step"]) == (s_full["steps"], s_full["best_step"])
    pd.testing.assert_frame_equal(
        pd.read_csv(run / "predictions" / "validation.csv"), pd.read_csv(full / "predictions" / "validation.csv")
    )
    assert (run / "model" / "model.safetensors").read_bytes() == (full / "model" / "model.safetensors").read_bytes()

    def log(d: Path) -> list[tuple]:
        recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        return [(r["split"], r["step"], r["loss"], r.get("accuracy")) for r in recs]

    assert log(run) == log(full)  # no torn, duplicated or missing records


def test_kill_9_at_six_points_then_resume_equals_uninterrupted(setup, capsys):
    run, trainers = setup["base"] / "killed", setup["trainers"]
    fresh = ["train", str(setup["recipe"]), "--out", str(run)]
    resume = ["train", "--resume", str(run)]
    predict = ["predict", str(run), "--input", str(setup["base"] / "train.csv"), "--output", str(run.parent / "p.csv")]

    # 1. Inside the first checkpoint write (step 2): no complete checkpoint exists yet.
    trainers.killed(fresh, "ckpt-weights", at=1)
    assert not (run / "checkpoints" / "last").exists()
    assert list((run / "checkpoints").glob(".last.*"))  # the torn temporary, never mistaken for a checkpoint
    assert main(predict) == 2
    assert "incomplete run directory" in capsys.readouterr().err

    # 2. Resume starts over from step 0; killed while swapping in the step-4 checkpoint (old one moved aside).
    trainers.killed(resume, "ckpt-swap", at=1)
    assert not (run / "checkpoints" / "last").exists() and _ckpt_step(run, ".last.textune-old") == 2

    # 3. Resume recovers last.old (step 2); killed while swapping in the best model at step 4.
    trainers.killed(resume, "model-swap", at=1)
    assert _ckpt_step(run) == 2 and not (run / "model").exists() and (run / ".model.textune-old").is_dir()

    # 4. Killed half-way through the 6th metrics.jsonl line (the train record of step 10).
    trainers.killed(resume, "torn-log", at=6)
    assert _ckpt_step(run) == 8
    assert not (run / "metrics.jsonl").read_text().endswith("\n")

    # 5. A live trainer paused just after its step-10 checkpoint: a second trainer is refused; then kill -9.
    marker = setup["base"] / "paused"
    pid = trainers.start(resume, "pause", marker=marker)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert time.monotonic() < deadline, trainers.log.read_text()[-2000:]
            time.sleep(0.2)
        assert main(resume) == 2
        err = capsys.readouterr().err
        assert f"another textune process (pid {pid}) is training into this run directory" in err
        assert main(fresh) == 2
        assert "run directory is not empty" in capsys.readouterr().err
    finally:
        os.kill(pid, signal.SIGKILL)
    assert trainers.wait() == -signal.SIGKILL
    assert _ckpt_step(run) == 10
    assert (run / ".lock").read_text() == str(pid)  # stale now: its owner is dead

    # 6. Killed in the final phase: predictions and summary written, manifest not.
    trainers.killed(resume, "finish")
    assert (run / "summary.json").is_file() and not (run / "manifest.json").exists()
    assert main(predict) == 2
    assert "incomplete run directory (manifest.json missing)" in capsys.readouterr().err

    # The stale lock is taken over and the run completes exactly like the uninterrupted one.
    assert main(resume) == 0, capsys.readouterr().err
    assert not (run / ".lock").exists()
    _same_as_reference(run, setup["full"])
    assert main(predict) == 0


def test_ctrl_c_saves_a_resumable_checkpoint(setup, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_collate, calls = loop.collate, [0]

    def collate(*a, **k):  # Ctrl-C arrives during the 5th optimizer step
        calls[0] += 1
        if calls[0] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_collate(*a, **k)

    monkeypatch.setattr(loop, "collate", collate)
    assert main(["train", str(setup["recipe"]), "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted at step 5; continue with --resume {run}" in err
    assert _ckpt_step(run) == 5  # an off-schedule checkpoint (schedule: every 2 steps)
    assert not (run / "summary.json").exists() and not (run / ".lock").exists()

    monkeypatch.setattr(loop, "collate", real_collate)
    assert main(["train", "--resume", str(run)]) == 0
    _same_as_reference(run, setup["full"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(setup, tmp_path, monkeypatch, capsys):
    from textune.tasks.classification import ClassificationTask

    real_loss, calls = ClassificationTask.loss, [0]

    def loss(self, logits, targets):
        out = real_loss(self, logits, targets)
        if logits.requires_grad:  # training steps only, not the validation loss
            calls[0] += 1
            if calls[0] == 3:
                return out * float("nan")
        return out

    monkeypatch.setattr(ClassificationTask, "loss", loss)
    run = tmp_path / "run"
    assert main(["train", str(setup["recipe"]), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training: non-finite loss at step 3") and "\n" not in err
    assert "last good checkpoint is kept" in err and "train.lr" in err
    assert _ckpt_step(run) == 2
    weights = load_file(run / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (run / "summary.json").exists() and not (run / ".lock").exists()


def test_stale_lock_from_dead_process_is_taken_over(setup, tmp_path, capsys):
    from textune.run import RunLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(str(dead.pid))
    with RunLock(run) as lock:
        assert lock.path.read_text() == str(os.getpid())
        # the same directory cannot be locked twice, even from this process
        with pytest.raises(TextuneError, match=f"pid {os.getpid()}"):
            RunLock(run).__enter__()
    assert not (run / ".lock").exists()
