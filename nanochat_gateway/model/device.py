"""Device and dtype choices: which devices to serve on and in which precision."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

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


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# On a CPU with native bf16, bf16 weights pay once the matmuls are large enough to be bound by
# memory bandwidth: with the `bench` preset (n_embd 512) they decoded 2.7x (batch 1) and 1.85x
# (batch 16) faster than float32 on an AVX512-BF16 EPYC. Smaller models stay in cache, where
# bf16's conversions cost more than the bytes saved.
CPU_BF16_MIN_N_EMBD = 512


def cpu_native_bf16_flags() -> list[str]:
    """Which of AMX-BF16 and AVX512-BF16 the processor reports; without both, bf16 is emulated and slow."""
    return [flag for flag in NATIVE_BF16_FLAGS if flag in cpu_flags()]


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: without them bf16 matmuls on the CPU are emulated and slow."""
    return bool(cpu_native_bf16_flags())


@dataclass(frozen=True, slots=True)
class DtypeChoice:
    """The serving dtype and, for `inspect` and the start-up log, why it was chosen."""

    dtype: torch.dtype
    reason: str


def choose_dtype(name: str, device: torch.device, n_embd: int) -> DtypeChoice:
    """Serving dtype for ``name`` ("auto" or a dtype name) on ``device`` for a model of width ``n_embd``.

    "auto" depends only on the device's capabilities and the model's width, never on a timing,
    so the same machine and checkpoint always get the same dtype (and system_fingerprint).
    """
    if name != "auto":
        return DtypeChoice(DTYPES[name], "set explicitly")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, "auto: the CUDA device supports bf16")
        return DtypeChoice(torch.float16, "auto: the CUDA device has no bf16, so float16")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"auto: float32 on {device.type}")
    flags = cpu_native_bf16_flags()
    if not flags:
        return DtypeChoice(torch.float32, "auto: the CPU has no native bf16 (AMX or AVX512-BF16)")
    if n_embd < CPU_BF16_MIN_N_EMBD:
        return DtypeChoice(torch.float32, f"auto: the CPU has {'/'.join(flags)}, but n_embd {n_embd} < "
                           f"{CPU_BF16_MIN_N_EMBD} is too small for bf16 to pay")
    return DtypeChoice(torch.bfloat16, f"auto: the CPU has {'/'.join(flags)} and n_embd {n_embd} >= "
                       f"{CPU_BF16_MIN_N_EMBD}")


def resolve_dtype(name: str, device: torch.device, n_embd: int = 768) -> torch.dtype:
    """Serving dtype (see choose_dtype)."""
    return choose_dtype(name, device, n_embd).dtype


def kv_cache_dtype(device: torch.device, compute_dtype: torch.dtype) -> torch.dtype:
    """The compute dtype, except float32 on the CPU: PyTorch's CPU attention kernels run
    several times slower on bf16/fp16 inputs than on fp32 (measured with `bench`), and decode
    attention there is bound by memory bandwidth rather than capacity."""
    return torch.float32 if device.type == "cpu" else compute_dtype
