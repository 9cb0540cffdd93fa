"""Pick the device, precision and CPU threads for this machine."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Recipe / command-line precision names -> Accelerate's (the autocast the inference path takes)
PRECISION_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16", "no": "no"}


def cpu_has_native_bf16() -> bool:
    """True on CPUs that compute bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def cuda_has_native_bf16(device: torch.device | None = None) -> bool:
    """True on GPUs that compute bf16 in hardware (Ampere and later). ``is_bf16_supported()`` alone also says
    yes where bf16 is emulated (T4, V100 on recent CUDA), which would train several times slower than fp16."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.3 has no including_emulation: compute capability 8.0+ has bf16 units
        return torch.cuda.get_device_capability(device)[0] >= 8


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: the condition for ``precision: auto`` to pick it."""
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(requested: str, device: torch.device) -> str:
    """Maps ``auto|fp32|bf16|fp16`` to Accelerate's ``no|bf16|fp16`` for ``device``.

    ``auto``: bf16 where the device computes it natively (CPUs with AVX512-BF16/AMX, GPUs from Ampere on), fp16
    with a gradient scaler on older GPUs (T4, P100, V100), fp32 on other CPUs.
    """
    if requested == "auto":
        if native_bf16(device):
            return "bf16"
        return "fp16" if device.type == "cuda" else "no"
    return PRECISION_NAMES[requested]


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
