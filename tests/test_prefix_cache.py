"""Prefix caching in the executor: a follow-up prompt prefills only what it adds.

Greedy outputs with the cache must equal those without it; cached_tokens says how much
of each prompt reused kept KV.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from test_engine import _run_scripted, collect, greedy, random_prompts, start_executor

from conftest import GENERATIONS, golden_expected, golden_model
from nanochat_gateway.engine.prefix_cache import PrefixCache

# ------------------------------------------------------------------ slot choice


def test_longest_match_in_the_same_scope_wins():
    cache = PrefixCache(4, min_tokens=2)
    cache.keep(0, [1, 2, 3, 4], "")
    cache.keep(1, [1, 2, 3, 4, 5, 6], "")
    cache.keep(2, [1, 2, 3, 4, 5, 6, 7], "other")
    seat = cache.seat([1, 2, 3, 4, 5, 6, 9], "", [0, 1, 2, 3])
    assert (seat.reused, seat.source) == (6, 1)


def test_the_last_prompt_token_is_always_prefilled():
    cache = PrefixCache(2, min_tokens=2)
    cache.keep(0, [1, 2, 3, 4, 5], "")
    assert cache.seat([1, 2, 3], "", [0, 1]).reused == 2
    assert cache.seat([1, 2, 3, 4, 5], "", [0, 1]).reused == 4


def test_short_matches_and_opted_out_requests_reuse_nothing():
    cache = PrefixCache(2, min_tokens=4)
    cache.keep(0, [1, 2, 3, 4, 5, 6], "")
    assert cache.seat([1, 2, 3, 9, 9], "", [0, 1]).reused == 0
    assert cache.seat([1, 2, 3, 4, 5, 6, 7], "", [0, 1], lookup=False).reused == 0
    assert PrefixCache(2, enabled=False).seat([1, 2, 3, 4, 5, 6, 7], "", [1, 0]).slot == 0


def test_a_consumed_prefix_is_taken_in_place_and_a_diverging_one_is_copied():
    cache = PrefixCache(3, min_tokens=2)
    cache.keep(0, [1, 2, 3], "")  # a conversation's last turn
    cache.keep(1, [1, 2, 3, 7, 7, 7], "")  # a longer sequence that the prompt leaves early
    in_place = cache.seat([1, 2, 3, 4, 5], "", [0, 1, 2])
    assert (in_place.slot, in_place.reused, in_place.needs_copy) == (0, 3, False)
    cache.forget(0)
    copied = cache.seat([1, 2, 3, 4, 5], "", [0, 1, 2])
    assert copied.needs_copy and copied.source == 1 and copied.slot in (0, 2)


def test_a_diverging_prefix_is_overwritten_when_copying_would_evict_more():
    cache = PrefixCache(2, min_tokens=2)
    cache.keep(0, [1, 2, 3, 4, 7], "")  # one token past the match would be lost in place
    cache.keep(1, [9, 9, 9, 9], "")  # copying would evict all four of these
    seat = cache.seat([1, 2, 3, 4, 5], "", [0, 1])
    assert (seat.slot, seat.reused, seat.needs_copy) == (0, 4, False)
    cache.forget(1)  # an empty slot: copying loses nothing
    assert cache.seat([1, 2, 3, 4, 5], "", [0, 1]).needs_copy


def test_eviction_takes_empty_slots_first_then_the_least_recently_used():
    cache = PrefixCache(3, min_tokens=2)
    cache.keep(0, [5, 5, 5], "")
    cache.keep(1, [6, 6, 6], "")
    assert cache.seat([9, 9, 9], "", [0, 1, 2]).slot == 2
    assert cache.seat([9, 9, 9], "", [0, 1]).slot == 0
    cache.keep(0, [5, 5, 5], "")  # used again: now the newest
    assert cache.seat([9, 9, 9], "", [0, 1]).slot == 1


# ------------------------------------------------------------------ executor


async def run(executor, request):
    """Greedy tokens of choice 0, and the prompt tokens the executor took from the cache."""
    stream = executor.submit(request)
    tokens, reasons, _ = await collect(stream)
    return tokens[0], stream.cached_tokens


async def uncached(executor, prompt, max_tokens):
    """Greedy tokens of the same prompt processed whole, whatever KV is kept."""
    return (await run(executor, greedy(prompt, max_tokens, use_prefix_cache=False)))[0]


async def three_turns(executor, prompt, reply=24):
    turns = [prompt[:80], prompt[80:130], prompt[130:180]]
    history, replies, cached = [], [], []
    for user in turns:
        history = history + user
        tokens, hit = await run(executor, greedy(history, reply))
        replies.append(tokens)
        cached.append(hit)
        history = history + tokens
    return replies, cached


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_greedy_three_turn_conversation_is_the_same_with_and_without_the_cache(generation):
    loaded, prompt = golden_model(generation), golden_expected(generation)["prompt"]
    results = {}
    for enabled in (True, False):
        executor = await start_executor(loaded, prefix_cache=enabled)
        try:
            results[enabled] = await three_turns(executor, prompt)
        finally:
            executor.stop()
    (on, on_cached), (off, off_cached) = results[True], results[False]
    assert on == off
    # each turn reuses everything the last one computed: its prompt and reply but the
    # reply's last token, which was sampled and never fed
    assert on_cached == [0, 80 + 24 - 1, 80 + 24 + 50 + 24 - 1] and off_cached == [0, 0, 0]


async def test_reuse_after_a_request_cancelled_during_its_prefill():
    loaded = golden_model("2026-07")
    prompt = golden_expected("2026-07")["prompt"][:250]
    executor = await start_executor(loaded, prefill_chunk_tokens=64)
    try:
        loop, queued = asyncio.get_running_loop(), threading.Event()
        chunks = []
        first = executor.submit(greedy(prompt, 20))

        def cancel_at_second_chunk(batch):  # runs on the executor thread, before the step
            chunks.append(batch)
            if len(chunks) == 2:
                loop.call_soon_threadsafe(lambda: (first.cancel(), queued.set()))
                assert queued.wait(5)

        executor.hooks.fault_injector = cancel_at_second_chunk
        assert (await collect(first))[1] == ["cancelled"]
        executor.hooks.fault_injector = None
        tokens, cached = await run(executor, greedy(prompt, 20))
        assert cached == 128  # the two chunks prefilled before the cancellation
        assert tokens == await uncached(executor, prompt, 20)
    finally:
        executor.stop()


async def test_kept_prefix_survives_a_newcomer_in_the_hole_a_finished_row_left():
    """Rows never move between slots (there is no compaction): a row that finishes leaves a
    hole, a newcomer takes the least recently used hole, and neither touches the kept prefix
    of a conversation nor the KV of rows still running. Every output equals the same
    request run alone."""
    loaded = golden_model("2026-03")
    prompt = golden_expected("2026-03")["prompt"]
    long_prompt, short_prompt, new_prompt, runner_prompt = random_prompts(4, seed=4, lo=40, hi=90)
    alone = {}
    executor = await start_executor(loaded, max_batch_size=4, prefix_cache=False)
    try:
        alone["long"] = (await run(executor, greedy(long_prompt, 300)))[0]
        alone["newcomer"] = (await run(executor, greedy(new_prompt, 5)))[0]
        follow_up = prompt[:100] + (await run(executor, greedy(prompt[:100], 10)))[0] + prompt[100:140]
        alone["follow_up"] = (await run(executor, greedy(follow_up, 20)))[0]
    finally:
        executor.stop()
    executor = await start_executor(loaded, max_batch_size=4)
    try:
        long_row = executor.submit(greedy(long_prompt, 300))  # slot 0, decoding throughout
        runner = executor.submit(greedy(runner_prompt, 10_000))  # slot 1, cancelled at the end
        await collect(executor.submit(greedy(short_prompt, 3)))  # slot 2: finishes, leaves a hole
        assert (await run(executor, greedy(prompt[:100], 10)))[1] == 0  # slot 3, kept after it
        # no slot is empty now: the newcomer takes the hole of the short row, kept longer ago
        assert await run(executor, greedy(new_prompt, 5)) == (alone["newcomer"], 0)
        tokens, cached = await run(executor, greedy(follow_up, 20))
        assert cached == 100 + 10 - 1 and tokens == alone["follow_up"]
        runner.cancel()
        await collect(runner)
        assert (await collect(long_row))[0][0] == alone["long"]
    finally:
        executor.stop()


async def test_n_2_reuses_a_prefix_and_each_choice_keeps_its_own_continuation():
    loaded = golden_model("2025-12")
    prompt = golden_expected("2025-12")["prompt"]
    executor = await start_executor(loaded)
    try:
        await run(executor, greedy(prompt[:60], 8))
        second = prompt[:60] + [5, 6, 7]
        stream = executor.submit(greedy(second, 12, n=2))
        tokens, reasons, _ = await collect(stream)
        assert stream.cached_tokens == 60 and tokens[0] == tokens[1] and reasons == ["length"] * 2
        assert tokens[0] == await uncached(executor, second, 12)
        # either choice's slot holds the prompt and its reply: the next turn finds it
        third = second + tokens[1] + [8, 9]
        reply, cached = await run(executor, greedy(third, 6))
        assert cached == len(second) + 12 - 1
        assert reply == await uncached(executor, third, 6)
    finally:
        executor.stop()


async def test_calculator_turn_tokens_are_part_of_the_kept_prefix():
    loaded = golden_model("2026-07")
    tok = loaded.tokenizer
    script = [tok.python_start, *tok.encode("1+2"), tok.python_end, 7, 8, tok.assistant_end]
    executor = await start_executor(loaded)
    try:
        first = [tok.bos_id, *golden_expected("2026-07")["prompt"][1:40]]
        stop = frozenset({tok.assistant_end})
        turn, _, _ = await _run_scripted(executor.submit(greedy(first, 30, stop_token_ids=stop)), script)
        assert tok.output_start in turn and turn[-1] == tok.assistant_end
        follow_up = first + turn + [tok.user_start, 40, 41, tok.user_end, tok.assistant_start]
        reply, cached = await run(executor, greedy(follow_up, 15))
        assert cached == len(first) + len(turn) - 1  # all but the stop token, which was never fed
        assert reply == await uncached(executor, follow_up, 15)
    finally:
        executor.stop()


async def test_a_prompt_that_is_all_cached_prefix_and_one_that_diverges_at_once():
    loaded = golden_model("2026-01")
    prompt = golden_expected("2026-01")["prompt"][:150]
    executor = await start_executor(loaded)
    try:
        reference, cached = await run(executor, greedy(prompt, 20))
        assert cached == 0
        again, cached = await run(executor, greedy(prompt, 20))
        assert cached == len(prompt) - 1 and again == reference
        # the kept sequence stays whole: a third identical prompt hits as well
        assert await run(executor, greedy(prompt, 20)) == (reference, len(prompt) - 1)
        diverging = [prompt[0] + 1, *prompt[1:]]
        tokens, cached = await run(executor, greedy(diverging, 20))
        assert cached == 0
        assert tokens == await uncached(executor, diverging, 20)
        counters = executor.counters
        assert counters.prefix_cache_queries == 4 * len(prompt)  # opted-out requests are not counted
        assert counters.prefix_cache_hits == 2 * (len(prompt) - 1)
    finally:
        executor.stop()


async def test_scopes_do_not_share_kept_prefixes():
    loaded = golden_model("2026-07")
    prompt = golden_expected("2026-07")["prompt"][:100]
    executor = await start_executor(loaded)
    try:
        assert (await run(executor, greedy(prompt, 5, prefix_scope="alice")))[1] == 0
        assert (await run(executor, greedy(prompt, 5, prefix_scope="bob")))[1] == 0
        assert (await run(executor, greedy(prompt, 5, prefix_scope="alice")))[1] == len(prompt) - 1
    finally:
        executor.stop()


async def test_scoring_a_prompt_prefills_it_whole():
    """Prompt log probabilities need logits at every prompt position, and max_tokens 0 asks
    for nothing else: such requests neither take nor count a cached prefix."""
    from nanochat_gateway.engine.request import PromptLogprobs

    loaded = golden_model("2026-07")
    prompt = golden_expected("2026-07")["prompt"][:80]
    executor = await start_executor(loaded)
    try:
        await run(executor, greedy(prompt, 5))
        queries = executor.counters.prefix_cache_queries
        stream = executor.submit(greedy(prompt, 0, prompt_logprobs=0))
        scores = [item for item in [i async for i in stream] if isinstance(item, PromptLogprobs)]
        assert stream.cached_tokens == 0 and len(scores[0].entries) == len(prompt) - 1
        assert executor.counters.prefix_cache_queries == queries
    finally:
        executor.stop()
