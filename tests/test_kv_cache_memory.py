"""The slot KV cache takes memory as slots fill, not all at once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from nanochat_gateway.engine.kv_cache import SlotKVCache
from nanochat_gateway.model.gpt import ModelConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def mappings_over(tensor: torch.Tensor) -> list[dict[str, str]]:
    """The /proc/self/smaps fields of every mapping that holds part of `tensor`'s memory."""
    first, last = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
    found: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(part, 16) for part in head.split("-"))
            current = {} if lo < last and hi > first else None
            if current is not None:
                found.append(current)
        elif current is not None:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    return found


def resident_kib(tensor: torch.Tensor) -> int:
    return sum(int(m["Rss"].split()[0]) for m in mappings_over(tensor))


def small_config() -> ModelConfig:
    return ModelConfig(sequence_len=4096, vocab_size=256, n_layer=2, n_head=2, n_kv_head=2, n_embd=256)


def test_cache_pages_are_small_so_a_short_prompt_keeps_a_slot_small():
    # With 2 MiB huge pages, writing a slot's first positions faulted in every head's whole
    # block: a 300-token prompt made a 2,048-token slot resident in full.
    cache = SlotKVCache(small_config(), n_slots=4, max_seq_len=4096, dtype=torch.float32)
    for tensor in (cache.k, cache.v):
        for mapping in mappings_over(tensor):
            flags = mapping["VmFlags"].split()
            assert "nh" in flags and "hg" not in flags  # MADV_NOHUGEPAGE, and no MADV_HUGEPAGE


def test_only_written_positions_become_resident():
    cache = SlotKVCache(small_config(), n_slots=4, max_seq_len=4096, dtype=torch.float32)
    before = resident_kib(cache.k)
    cache.k[:, 2, :, :10] = 1.0  # slot 2's first ten positions: 2 layers x 2 heads x 10 rows of 512 B
    assert resident_kib(cache.k) - before <= 4 * 8  # a page or two per (layer, head) block of 2 MiB
    assert cache.k.abs().sum() == 2 * 2 * 10 * 128  # and the rest reads as zeros
    assert cache.v.abs().sum() == 0
