"""Resumable checkpoints, written atomically: a kill at any moment leaves the previous one usable.

Weights are safetensors; optimizer, scheduler and RNG state are tensors and plain containers loaded with
``weights_only=True``, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from textune import _atomic
from textune._seed import rng_state, set_rng_state
from textune.errors import TextuneError

STATE = "state.json"
SCALER = "scaler.pt"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (all weights for full fine-tuning, adapters + head for LoRA)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(
    ckpt_dir: Path,
    model,
    optimizer,
    scheduler,
    state: dict[str, Any],
    rng_states: list[dict] | None = None,
    scaler=None,
) -> None:
    """Writes the checkpoint; ``rng_states`` holds every process's RNG state in a multi-process run, ``scaler``
    the fp16 gradient scaler (its scale and growth tracker), so an fp16 run resumes exactly."""
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt_dir.name}.", dir=ckpt_dir.parent))
    try:
        save_file(trainable_state(model), tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states or [rng_state()], tmp / "rng.pt")  # one entry per process
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / SCALER)
        # state.json last: its presence marks a complete checkpoint
        (tmp / STATE).write_text(json.dumps(state, indent=1))
        _atomic.replace_dir(tmp, ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, rank: int = 0, scaler=None) -> dict[str, Any]:
    _atomic.recover_dir(ckpt_dir)
    if not (ckpt_dir / STATE).is_file():
        raise TextuneError(f"{ckpt_dir}: no complete checkpoint to resume from; train again without --resume")
    try:
        weights = load_file(ckpt_dir / "model.safetensors")
        missing = set(trainable_state(model)) - set(weights)
        if missing:
            raise TextuneError(f"{ckpt_dir}: checkpoint lacks {sorted(missing)[:3]}; it belongs to another model")
        model.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(ckpt_dir / "scheduler.pt", weights_only=True))
        state = json.loads((ckpt_dir / STATE).read_text())
        states = torch.load(ckpt_dir / "rng.pt", weights_only=True)
        states = states if isinstance(states, list) else [states]
        set_rng_state(states[rank] if rank < len(states) else states[0])
        if scaler is not None and (ckpt_dir / SCALER).is_file():
            scaler.load_state_dict(torch.load(ckpt_dir / SCALER, weights_only=True))
    except TextuneError:
        raise
    except Exception as exc:
        raise TextuneError(f"{ckpt_dir}: checkpoint is unreadable ({type(exc).__name__}); train again") from None
    return state
