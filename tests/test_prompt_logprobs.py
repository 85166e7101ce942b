"""Prompt scoring in the engine: every prompt position's log probability, computed inside the
chunked prefill of the rows that ask, equal to a plain forward pass over the whole prompt."""

from __future__ import annotations

import asyncio

import pytest
import torch
from test_engine import collect, greedy, random_prompts, start_executor

from conftest import golden_expected, golden_model
from nanochat_gateway.engine.request import ChoiceDelta, PromptLogprobs


async def items_of(stream) -> list:
    items = []
    async for item in stream:
        items.append(item)
    return items


def reference(loaded, prompt: list[int]) -> torch.Tensor:
    """log_softmax of a no-cache forward: row p predicts prompt[p + 1]."""
    with torch.inference_mode():
        logits = loaded.model.forward(torch.tensor([prompt]))[0]
    return torch.log_softmax(logits.float(), dim=-1)


@pytest.mark.parametrize("generation", ["2025-10", "2026-07"])  # without and with smear
async def test_prompt_logprobs_match_a_full_forward_across_prefill_chunks(generation):
    loaded = golden_model(generation)
    prompt = golden_expected(generation)["prompt"][:150]  # three prefill chunks of 64
    executor = await start_executor(loaded, prefill_chunk_tokens=64)
    try:
        # Other rows decode and prefill alongside, so the scored chunks share steps with them.
        others = [executor.submit(greedy(p, 20)) for p in random_prompts(3, seed=4)]
        stream = executor.submit(greedy(prompt, 3, prompt_logprobs=2))
        items = await items_of(stream)
        await asyncio.gather(*(collect(s) for s in others))
    finally:
        executor.stop()
    scored = [i for i in items if isinstance(i, PromptLogprobs)]
    assert len(scored) == 1
    first_delta = next(k for k, i in enumerate(items) if isinstance(i, ChoiceDelta))
    assert items.index(scored[0]) < first_delta  # sent before the first token
    entries = scored[0].entries
    assert [e.token_id for e in entries] == prompt[1:]
    expected = reference(loaded, prompt)
    for p, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(expected[p, prompt[p + 1]].item(), abs=2e-4)
        values, ids = torch.topk(expected[p], 2)
        assert [t for t, _ in entry.top] == ids.tolist()
        assert [lp for _, lp in entry.top] == pytest.approx(values.tolist(), abs=2e-4)


async def test_max_tokens_zero_scores_the_prompt_and_generates_nothing():
    loaded = golden_model("2026-07")
    executor = await start_executor(loaded, max_seq_len=64)
    try:
        prompt = golden_expected("2026-07")["prompt"][:64]  # the whole context: no room to generate
        items = await items_of(executor.submit(greedy(prompt, 0, prompt_logprobs=0, n=2)))
        tokens, reasons, _ = await collect(executor.submit(greedy(prompt[:20], 0)))
        assert executor.slots_used == 0
    finally:
        executor.stop()
    deltas = [i for i in items if isinstance(i, ChoiceDelta)]
    assert sorted((d.index, d.token_ids, d.finish_reason) for d in deltas) == [(0, [], "length"), (1, [], "length")]
    (scored,) = [i for i in items if isinstance(i, PromptLogprobs)]
    assert len(scored.entries) == 63 and all(e.top == [] for e in scored.entries)
    assert tokens == [[]] and reasons == ["length"]  # without scoring, too


async def test_rows_that_do_not_ask_get_no_prompt_logprobs():
    executor = await start_executor(golden_model("2026-07"))
    try:
        items = await items_of(executor.submit(greedy(random_prompts(1)[0], 2)))
    finally:
        executor.stop()
    assert not any(isinstance(i, PromptLogprobs) for i in items)
