"""What a DeviceExecutor is configured with, what it reports per step, and the memory check
that refuses a KV cache that cannot fit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nanochat_gateway.model.step import StepBatch


@dataclass
class ExecutorOptions:
    max_batch_size: int = 16
    max_seq_len: int = 0  # 0 = the model's sequence_len
    prefill_chunk_tokens: int = 256
    max_queue: int = 256
    cpu_threads: int = 0
    admit_window_ms: float = 3.0
    kv_cache_memory_fraction: float = 0.9
    calculator: bool = True
    prefix_cache: bool = True  # finished rows keep their KV for later prompts with the same prefix
    prefix_cache_min_tokens: int = 16  # shorter matches are not worth reusing


@dataclass(slots=True)
class StepInfo:
    """What one step did, for metrics listeners (called on the executor thread)."""

    executor: str
    batch_size: int
    prefill_tokens: int
    decode_tokens: int
    seconds: float
    slots_used: int


@dataclass
class StepHooks:
    """What watches each step (metrics, benchmarks), set on the loop and called on the thread."""

    listeners: list[Callable[[StepInfo], None]] = field(default_factory=list)
    fault_injector: Callable[[StepBatch], None] | None = None  # tests raise or stall from here


@dataclass
class StepCounters:
    """Totals since start, written by the executor thread and read anywhere."""

    steps: int = 0
    tokens_prefilled: int = 0
    tokens_decoded: int = 0
    grammar_mask_seconds: float = 0.0  # spent applying structured-output masks to logits
    prefix_cache_queries: int = 0  # prompt tokens of requests that looked for a kept prefix
    prefix_cache_hits: int = 0  # of those, tokens whose KV was reused instead of prefilled

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else None


def check_kv_fits(device: torch.device, options: ExecutorOptions, max_seq_len: int, per_token: int) -> None:
    """Refuse a KV cache that cannot fit, saying what to lower."""
    available = available_memory(device)
    if available is None:
        return
    needed = options.max_batch_size * max_seq_len * per_token
    budget = int(available * options.kv_cache_memory_fraction)
    if needed > budget:
        raise MemoryError(
            f"the KV cache needs {needed / 2**30:.2f} GiB ({options.max_batch_size} slots x "
            f"{max_seq_len} tokens x {per_token} B/token) but only {budget / 2**30:.2f} GiB of {device} memory "
            "is available for it; lower [engine] max_batch_size or max_seq_len"
        )


def available_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None
