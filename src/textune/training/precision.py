"""Pick the device, precision and CPU threads for this machine."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """True on CPUs that compute bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def resolve_precision(requested: str, device: torch.device) -> str:
    """Maps ``auto|fp32|bf16|fp16`` to Accelerate's ``no|bf16|fp16`` for ``device``."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[requested]


def configure_threads(num_threads: int | None) -> int:
    if num_threads is None:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = num_threads
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def setup_cuda_speed() -> None:
    if torch.cuda.is_available():
        # TF32 matmuls: ~8x the fp32 throughput on Ampere+, with a precision loss training does not notice.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
