"""Launchers: checks on what torchrun / accelerate launch set up, and ``--processes N`` re-running the command
under torch.distributed's launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from textune.errors import TextuneError

# Accelerate's sharded engines: textune's loop evaluates and checkpoints whole weights in every process
_SHARDED_ENGINES = {
    "ACCELERATE_USE_FSDP": "FSDP",
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
}


def rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when alone)."""
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def check_launch(out: str | Path | None, resume: str | Path | None) -> None:
    """What a launcher (torchrun, accelerate launch) set up must suit the loop, before anything is written."""
    for var, engine in _SHARDED_ENGINES.items():
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise TextuneError(
                f"train: the Accelerate config asks for {engine}, which textune does not support yet (its evaluation "
                "and checkpoints need whole weights in each process); use distributed_type: MULTI_GPU (data "
                "parallel, examples/accelerate/), and for memory train.gradient_checkpointing or batch_size: auto"
            )
    if world_size() > 1 and out is None and resume is None:
        raise TextuneError(
            "train: under torchrun / accelerate launch, give --out RUN_DIR (on a filesystem every process sees) "
            "so that all processes write one run directory"
        )


def relaunch(processes: int, argv: list[str]) -> int:
    """Runs ``textune <argv>`` in ``processes`` data-parallel processes through torchrun; returns its exit code.

    The caller fixes the run directory in ``argv`` (``--out``) so that every process writes into the same one.
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "textune.cli",
        *argv,
    ]
    return subprocess.call(cmd)
