"""Devices and mixed precision: which device runs, whether it has bf16, what precision to use.

A low layer (like errors.py): data, models, inference, training, export and planning all ask it."""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from pathlib import Path

from lmforge.errors import LmforgeError


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX).

    Without it, bf16 autocast on a CPU is emulated and slower than fp32, so 'auto'
    must not pick it.
    """
    if platform.system() == "Linux":
        try:
            flags = Path("/proc/cpuinfo").read_text(errors="ignore")
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return platform.machine() == "arm64" and platform.system() == "Darwin"  # Apple M2+ have bf16


def resolve_device(requested: str) -> str:
    """'cpu' or 'cuda' for a requested 'auto' | 'cpu' | 'cuda'."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise LmforgeError(
            "training.device is 'cuda' but no CUDA GPU is visible; use device: auto or cpu"
        )
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_precision(requested: str, device: str) -> str:
    """Accelerate's mixed-precision name ('bf16', 'fp16' or 'no') for a requested precision."""
    import torch

    if requested == "fp32":
        return "no"
    bf16 = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_supports_bf16()
    if requested == "auto":
        return "bf16" if bf16 else "no"
    if requested == "fp16" and device != "cuda":
        raise LmforgeError(
            "training.precision fp16 needs a CUDA GPU (loss scaling); on a CPU use bf16 or fp32"
        )
    if requested == "bf16" and not bf16 and device == "cuda":
        raise LmforgeError("training.precision bf16 is not supported by this GPU; use fp16 or fp32")
    return requested


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_host_memory() -> None:
    """Give the host memory that freed tensors left inside the C allocator back to the system.

    glibc keeps freed blocks resident, and batches of many shapes fragment them, so a training
    process's RSS creeps up epoch after epoch (docs/benchmarks.md). ``malloc_trim(0)`` returns
    every free page of every arena; it takes milliseconds, and the training loop calls it
    between phases (and every ``training.release_memory_steps`` steps), never inside one.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
