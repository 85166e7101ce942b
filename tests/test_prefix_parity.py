"""Prefix reuse at the model level, for every golden generation.

A slot first runs an earlier sequence: part of the prompt as prefill chunks, the rest of a
prefix one token per step (as generated tokens are), then a tail that diverges from the
prompt. Reusing the slot's first m positions and prefilling only prompt[m:] through
forward_step must give the logits of a full prefill, for split points on both sides of
the short sliding window, in place and after copying the prefix into another slot.
"""

from __future__ import annotations

import random

import pytest
import torch

from conftest import GENERATIONS, golden_expected, golden_model
from nanochat_gateway.engine.kv_cache import SlotKVCache
from nanochat_gateway.model.step import StepBatch

ATOL = 1e-4  # the golden README's recommended tolerance (30x float32 noise)


def short_window(generation: str) -> int:
    windows = golden_model(generation).model.windows
    return min(windows) if min(windows) < 512 else 128  # full-context generations: any point


def split_points(generation: str) -> list[int]:
    w = short_window(generation)
    return [1, 37, w, w + 1, 299]


def run_earlier_sequence(model, cache: SlotKVCache, slot: int, prompt: list[int], m: int) -> None:
    """Fill `slot` as a finished earlier request would: prompt[:m] (chunks, then its last
    10 tokens one per step), then 8 tokens that differ from the prompt's continuation."""
    rng = random.Random(m)
    tail = [(t + 1 + rng.randrange(280)) % 290 for t in prompt[m : m + 8]] or rng.choices(range(290), k=8)
    sequence = prompt[:m] + tail
    chunked = max(0, m - 10)
    for start in range(0, chunked, 64):
        chunk = sequence[start : min(start + 64, chunked)]
        model.forward_step(StepBatch.build([], [(slot, start, chunk)], [0]), cache)
    for pos in range(chunked, len(sequence)):
        model.forward_step(StepBatch.build([(slot, pos, sequence[pos])], [], [0]), cache)


def prefill_logits(model, cache: SlotKVCache, slot: int, start: int, tokens: list[int]) -> torch.Tensor:
    """Logits at every position of a prefill of `tokens` at `start` (chunks of up to 120)."""
    out = []
    for offset in range(0, len(tokens), 120):
        chunk = tokens[offset : offset + 120]
        batch = StepBatch.build([], [(slot, start + offset, chunk)], [], every_position=[0])
        out.append(model.forward_step(batch, cache))
    return torch.cat(out)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_reused_prefix_plus_suffix_equals_full_prefill(generation):
    loaded, expected = golden_model(generation), golden_expected(generation)
    model, prompt, ref = loaded.model, expected["prompt"], expected["logits"]
    worst = {}
    with torch.inference_mode():
        for m in split_points(generation):
            cache = SlotKVCache(loaded.config, 3, 512, dtype=torch.float32, smear=loaded.spec.smear)
            run_earlier_sequence(model, cache, 1, prompt, m)
            model.resume_slot(cache, 1, prompt[m - 1])
            in_place = prefill_logits(model, cache, 1, m, prompt[m:])
            # the same prefix copied into a slot that held something else
            run_earlier_sequence(model, cache, 2, prompt[::-1], 40)
            cache.copy(1, 2, m)
            model.resume_slot(cache, 2, prompt[m - 1])
            copied = prefill_logits(model, cache, 2, m, prompt[m:])
            worst[m] = max((in_place - ref[m:]).abs().max().item(), (copied - ref[m:]).abs().max().item())
    assert max(worst.values()) <= ATOL, worst


@pytest.mark.parametrize("generation", GENERATIONS)
def test_decode_after_reused_prefix_continues_greedily_like_the_reference(generation):
    """Reuse 150 tokens of a 200-token prompt, prefill the other 50, then decode greedily:
    the 40 tokens equal nanochat's greedy continuation."""
    loaded, expected = golden_model(generation), golden_expected(generation)
    model, prompt = loaded.model, expected["prompt"][: expected["greedy_prefix_len"]]
    cache = SlotKVCache(loaded.config, 2, 512, dtype=torch.float32, smear=loaded.spec.smear)
    out = []
    with torch.inference_mode():
        run_earlier_sequence(model, cache, 0, prompt, 150)
        model.resume_slot(cache, 0, prompt[149])
        token = int(prefill_logits(model, cache, 0, 150, prompt[150:])[-1].argmax())
        for pos in range(len(prompt), len(prompt) + expected["greedy_n"]):
            out.append(token)
            token = int(model.forward_step(StepBatch.build([(0, pos, token)], [], [0]), cache)[0].argmax())
    assert out == expected["greedy_naive"]


def test_smear_generation_needs_the_restored_previous_embedding():
    """Without resume_slot the suffix's first token smears with the wrong embedding: the
    parity test above would catch a reuse path that forgot it."""
    loaded, expected = golden_model("2026-07"), golden_expected("2026-07")
    model, prompt, ref = loaded.model, expected["prompt"], expected["logits"]
    cache = SlotKVCache(loaded.config, 1, 512, dtype=torch.float32, smear=True)
    with torch.inference_mode():
        run_earlier_sequence(model, cache, 0, prompt, 100)
        stale = prefill_logits(model, cache, 0, 100, prompt[100:])
    assert (stale - ref[100:]).abs().max().item() > 100 * ATOL
