"""Device and dtype choices: which devices to serve on and in which precision."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_devices(devices: str | list[str]) -> list[torch.device]:
    """'auto' is every CUDA GPU, else MPS, else the CPU; a list is taken as given."""
    if devices != "auto":
        return [torch.device(d) for d in devices]
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        return [torch.device("mps")]
    return [torch.device("cpu")]


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: without them bf16 matmuls on the CPU are emulated and slow."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def _time_linear(dtype: torch.dtype, n_embd: int, rows: int = 16, reps: int = 30) -> float:
    x = torch.randn(rows, n_embd, dtype=dtype)
    w = torch.randn(4 * n_embd, n_embd, dtype=dtype)
    for _ in range(3):  # the first calls pay one-time kernel set-up
        F.linear(x, w)
    start = time.perf_counter()
    for _ in range(reps):
        F.linear(x, w)
    return time.perf_counter() - start


@functools.cache
def cpu_bf16_speedup(n_embd: int) -> float:
    """Measured fp32/bf16 time ratio of an MLP-shaped matmul at batch 16 on this CPU."""
    return _time_linear(torch.float32, n_embd) / _time_linear(torch.bfloat16, n_embd)


def resolve_dtype(name: str, device: torch.device, n_embd: int = 768) -> torch.dtype:
    """Serving dtype. 'auto': bf16 on CUDA when supported, fp32 on MPS, and on the CPU bf16
    only when the processor has native bf16 and a quick probe shows it faster."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        speedup = cpu_bf16_speedup(n_embd)
        log.info("cpu bf16 probe: %.2fx the fp32 matmul speed", speedup)
        if speedup >= 1.3:
            return torch.bfloat16
    return torch.float32


def kv_cache_dtype(device: torch.device, compute_dtype: torch.dtype) -> torch.dtype:
    """The compute dtype, except float32 on the CPU: PyTorch's CPU attention kernels run
    several times slower on bf16/fp16 inputs than on fp32 (measured with `bench`), and decode
    attention there is bound by memory bandwidth rather than capacity."""
    return torch.float32 if device.type == "cpu" else compute_dtype
