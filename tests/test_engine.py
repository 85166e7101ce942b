"""The device executor: batch-invariant outputs, sampling, stops, cancellation, faults."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from conftest import golden_expected, golden_model
from nanochat_gateway.engine.executor import DeviceExecutor
from nanochat_gateway.engine.options import ExecutorOptions
from nanochat_gateway.engine.request import ChoiceDelta, EngineError, GenerationRequest, SamplingParams
from nanochat_gateway.engine.router import Router


async def start_executor(loaded, name="cpu0", **options) -> DeviceExecutor:
    options.setdefault("max_batch_size", 8)
    options.setdefault("prefill_chunk_tokens", 64)
    executor = DeviceExecutor(name, torch.device("cpu"), lambda device: loaded, ExecutorOptions(**options))
    executor.start(asyncio.get_running_loop())
    while not executor.ready.is_set():
        await asyncio.sleep(0.005)
    assert executor.status == "ready", executor.failure
    return executor


async def collect(stream):
    """All tokens, finish reasons and logprobs of a stream; raises its EngineError."""
    n = stream.request.n
    tokens, reasons, logprobs = [[] for _ in range(n)], [None] * n, [[] for _ in range(n)]
    async for item in stream:
        if isinstance(item, EngineError):
            raise item
        if isinstance(item, ChoiceDelta):
            tokens[item.index] += item.token_ids
            logprobs[item.index] += item.logprobs or []
            if item.finish_reason:
                reasons[item.index] = item.finish_reason
    return tokens, reasons, logprobs


def greedy(prompt, max_tokens=40, **kw) -> GenerationRequest:
    return GenerationRequest(prompt_ids=list(prompt), max_tokens=max_tokens,
                             sampling=SamplingParams(temperature=0.0), **kw)


def random_prompts(count, seed=0, lo=3, hi=300):
    rng = random.Random(seed)
    return [[291] + rng.choices(range(290), k=rng.randint(lo, hi)) for _ in range(count)]


@pytest.mark.parametrize("generation", ["2025-10", "2026-01", "2026-03", "2026-07"])
async def test_greedy_output_is_the_same_alone_and_in_a_busy_batch(generation):
    loaded, expected = golden_model(generation), golden_expected(generation)
    executor = await start_executor(loaded)
    try:
        prompt = expected["prompt"][:200]
        alone, reasons, _ = await collect(executor.submit(greedy(prompt)))
        assert alone[0] == expected["greedy_naive"] and reasons == ["length"]
        others = random_prompts(9, seed=1)
        lone_others = [(await collect(executor.submit(greedy(p, 25))))[0][0] for p in others[:3]]
        # 10 requests, 8 slots: rows join and leave while the golden prompt is running
        streams = [executor.submit(greedy(p, 25)) for p in others[:4]]
        streams.append(executor.submit(greedy(prompt)))
        streams += [executor.submit(greedy(p, 25)) for p in others[4:]]
        results = await asyncio.gather(*(collect(s) for s in streams))
        assert results[4][0][0] == expected["greedy_naive"]
        assert [r[0][0] for r in results[:3]] == lone_others
    finally:
        executor.stop()


async def test_seeded_sampling_is_the_same_alone_and_in_a_batch():
    executor = await start_executor(golden_model("2026-07"))
    try:
        prompt = golden_expected("2026-07")["prompt"][:150]

        def seeded():
            params = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=1234,
                                    presence_penalty=0.3, frequency_penalty=0.2, logit_bias={7: 2.0})
            return GenerationRequest(prompt_ids=prompt, max_tokens=30, sampling=params)

        alone = (await collect(executor.submit(seeded())))[0][0]
        streams = [executor.submit(greedy(p, 20)) for p in random_prompts(5, seed=2)] + [executor.submit(seeded())]
        batched = (await asyncio.gather(*(collect(s) for s in streams)))[-1][0][0]
        assert alone == batched
        other_seed = seeded()
        other_seed.sampling.seed = 99
        assert (await collect(executor.submit(other_seed)))[0][0] != alone
    finally:
        executor.stop()


async def test_unseeded_requests_get_fresh_randomness():
    executor = await start_executor(golden_model("2026-07"))
    try:
        prompt = golden_expected("2026-07")["prompt"][:50]
        runs = []
        for _ in range(2):
            request = GenerationRequest(prompt_ids=prompt, max_tokens=20, sampling=SamplingParams(temperature=1.0))
            runs.append((await collect(executor.submit(request)))[0][0])
        assert runs[0] != runs[1]
    finally:
        executor.stop()


async def test_n_choices_share_one_prefill_and_differ():
    executor = await start_executor(golden_model("2026-07"))
    try:
        prompt = golden_expected("2026-07")["prompt"][:120]
        params = SamplingParams(temperature=1.0, seed=5)
        single = (await collect(executor.submit(GenerationRequest(prompt, 15, params))))[0][0]
        before = executor.counters.tokens_prefilled
        request = GenerationRequest(prompt, 15, SamplingParams(1.0, seed=5), n=3, use_prefix_cache=False)
        tokens, reasons, _ = await collect(executor.submit(request))
        assert executor.counters.tokens_prefilled - before == len(prompt)  # one prefill for three choices
        assert tokens[0] == single  # choice 0 uses the request's own seed
        assert len({tuple(t) for t in tokens}) == 3 and reasons == ["length"] * 3
        greedy_n = (await collect(executor.submit(greedy(prompt, 10, n=2))))[0]
        assert greedy_n[0] == greedy_n[1]
    finally:
        executor.stop()


async def test_logprobs_are_reported_per_token():
    executor = await start_executor(golden_model("2026-03"))
    try:
        prompt = golden_expected("2026-03")["prompt"][:60]
        params = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=5)
        tokens, _, logprobs = await collect(executor.submit(GenerationRequest(prompt, 6, params)))
        assert [lp.token_id for lp in logprobs[0]] == tokens[0]
        for lp in logprobs[0]:
            assert len(lp.top) == 5 and lp.top[0][0] == lp.token_id  # greedy picks the best
            assert lp.logprob <= 0 and lp.top[0][1] >= lp.top[-1][1]
    finally:
        executor.stop()


async def test_stop_token_ends_the_row_with_stop():
    loaded, expected = golden_model("2026-07"), golden_expected("2026-07")
    executor = await start_executor(loaded)
    try:
        prompt = expected["prompt"][:200]
        stop_at = expected["greedy_naive"][5]
        tokens, reasons, _ = await collect(executor.submit(greedy(prompt, stop_token_ids=frozenset({stop_at}))))
        first = expected["greedy_naive"].index(stop_at)
        assert tokens[0] == expected["greedy_naive"][: first + 1] and reasons == ["stop"]
    finally:
        executor.stop()


async def test_context_limit_finishes_with_length():
    executor = await start_executor(golden_model("2026-07"), max_seq_len=64)
    try:
        prompt = random_prompts(1, lo=50, hi=50)[0]
        tokens, reasons, _ = await collect(executor.submit(greedy(prompt, 100)))
        assert reasons == ["length"] and len(prompt) + len(tokens[0]) == 65  # last token is never fed
        with pytest.raises(EngineError, match="does not fit"):
            await collect(executor.submit(greedy([291] * 64, 5)))
    finally:
        executor.stop()


async def test_cancel_frees_the_slot_within_a_step():
    executor = await start_executor(golden_model("2026-07"), max_batch_size=2)
    try:
        prompt = random_prompts(1, lo=20, hi=20)[0]
        running = [executor.submit(greedy(prompt, 10_000)) for _ in range(2)]
        waiting = executor.submit(greedy(prompt, 5))
        while not all(s.admitted for s in running):
            await asyncio.sleep(0.01)
        assert executor.running == 2 and executor.waiting == 1
        running[0].cancel()
        tokens, reasons, _ = await collect(waiting)  # admitted into the freed slot
        assert reasons == ["length"] and len(tokens[0]) == 5
        running[1].cancel()
        await collect(running[0])
        await collect(running[1])
        assert executor.running == 0 and executor.waiting == 0
        for _ in range(100):
            if executor.slots_used == 0:
                break
            await asyncio.sleep(0.01)
        assert executor.slots_used == 0
    finally:
        executor.stop()


async def test_cancelling_a_queued_request():
    executor = await start_executor(golden_model("2026-07"), max_batch_size=1)
    try:
        busy = executor.submit(greedy([291, 5, 6], 10_000))
        queued = executor.submit(greedy([291, 5, 6], 5))
        queued.cancel()
        _, reasons, _ = await collect(queued)
        assert reasons == ["cancelled"] and executor.waiting == 0
        busy.cancel()
        await collect(busy)
    finally:
        executor.stop()


async def test_full_queue_is_refused_at_once_and_queue_wait_times_out():
    executor = await start_executor(golden_model("2026-07"), max_batch_size=1, max_queue=1)
    try:
        busy = executor.submit(greedy([291, 5, 6], 10_000))
        while not busy.admitted:
            await asyncio.sleep(0.005)
        queued = executor.submit(GenerationRequest([291, 7], 5, SamplingParams(0.0), queue_timeout_s=0.2))
        with pytest.raises(EngineError) as overloaded:
            executor.submit(greedy([291, 8], 5))
        assert overloaded.value.kind == "overloaded"
        with pytest.raises(EngineError) as timed_out:
            await collect(queued)
        assert timed_out.value.kind == "timeout"
        busy.cancel()
        await collect(busy)
    finally:
        executor.stop()


async def test_a_failing_step_fails_only_its_requests_and_the_executor_keeps_serving():
    executor = await start_executor(golden_model("2026-07"))
    try:
        poison = 283

        def injector(batch):
            if poison in batch.tokens.tolist():
                raise RuntimeError("injected fault")

        executor.hooks.fault_injector = injector
        good = executor.submit(greedy([291, 5, 6, 7], 30))
        while not good.first_token_at:
            await asyncio.sleep(0.005)
        bad = executor.submit(greedy([291, poison, 4], 5))
        for stream in (bad, good):  # both were in the failing step
            with pytest.raises(EngineError) as failed:
                await collect(stream)
            assert failed.value.kind == "internal"
        executor.hooks.fault_injector = None
        tokens, reasons, _ = await collect(executor.submit(greedy([291, 5, 6, 7], 5)))
        assert reasons == ["length"] and len(tokens[0]) == 5
        assert executor.status == "ready" and executor.running == 0
    finally:
        executor.stop()


async def test_out_of_memory_in_prefill_fails_that_request_only():
    executor = await start_executor(golden_model("2026-07"))
    try:
        prompt = golden_expected("2026-07")["prompt"][:100]
        expected = (await collect(executor.submit(greedy(prompt, 30))))[0][0]
        state = {"armed": False}

        def injector(batch):
            if state["armed"] and batch.prefill and batch.prefill[0].length > 50:
                state["armed"] = False
                raise torch.OutOfMemoryError("injected OOM")

        executor.hooks.fault_injector = injector
        survivor = executor.submit(greedy(prompt, 30))
        while not survivor.first_token_at:
            await asyncio.sleep(0.005)
        state["armed"] = True
        victim = executor.submit(greedy(random_prompts(1, lo=80, hi=80)[0], 5))
        with pytest.raises(EngineError, match="out of memory"):
            await collect(victim)
        assert (await collect(survivor))[0][0] == expected  # unaffected, token for token
    finally:
        executor.stop()


async def test_calculator_output_is_forced_into_the_sequence():
    """A model whose every step prefers <|python_start|> '1+2' <|python_end|> gets
    <|output_start|> 3 <|output_end|> forced after it, as nanochat's engine does."""
    loaded = golden_model("2026-07")
    tok = loaded.tokenizer
    script = [tok.python_start, *tok.encode("1+2"), tok.python_end, tok.assistant_end]
    executor = await start_executor(loaded)
    try:
        request = greedy([291, 5], 20, stop_token_ids=frozenset({tok.assistant_end}))
        tokens, _, _ = await _run_scripted(executor.submit(request), script)
        forced = [tok.output_start, *tok.encode("3"), tok.output_end]
        start = tokens.index(tok.python_end) + 1
        assert tokens[start : start + len(forced)] == forced
    finally:
        executor.stop()


async def _run_scripted(stream, script):
    """Drive a greedy row through `script` by rewriting its logit bias before each step."""
    from nanochat_gateway.engine import sampling

    original = sampling.select_tokens
    position = {"i": 0}

    def scripted(logits, samplers):
        i = min(position["i"], len(script) - 1)
        logits = logits.clone()
        logits[:, script[i]] += 1000.0
        position["i"] += 1
        return original(logits, samplers)

    import nanochat_gateway.engine.scheduler as scheduler_module

    scheduler_module.select_tokens = scripted
    try:
        tokens, reasons, _ = await collect(stream)
    finally:
        scheduler_module.select_tokens = original
    return tokens[0], reasons, None


async def test_events_cross_to_asyncio_once_per_step(monkeypatch):
    executor = await start_executor(golden_model("2026-07"))
    try:
        loop = asyncio.get_running_loop()
        calls = {"n": 0}
        real = loop.call_soon_threadsafe

        def counting(callback, *args, **kwargs):
            if getattr(callback, "__name__", "") == "_deliver":
                calls["n"] += 1
            return real(callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
        steps_before = executor.counters.steps
        streams = [executor.submit(greedy(p, 20)) for p in random_prompts(6, seed=3, hi=30)]
        await asyncio.gather(*(collect(s) for s in streams))
        steps = executor.counters.steps - steps_before
        # 6 requests x 20 tokens = 120 events; at most one hand-over per step (+1 for admission)
        assert calls["n"] <= steps + 1
    finally:
        executor.stop()


async def test_router_sends_each_request_to_the_least_loaded_executor():
    loaded = golden_model("2026-07")
    first = await start_executor(loaded, name="cpu0", max_batch_size=2)
    second = await start_executor(loaded, name="cpu1", max_batch_size=2)
    router = Router([first, second])

    def owner(stream):
        return next(e.name for e in (first, second) if stream in e.streams)

    try:
        streams = [router.submit(greedy([291, 5 + i], 10_000)) for i in range(3)]
        assert [owner(s) for s in streams] == ["cpu0", "cpu1", "cpu0"]
        streams[0].cancel()
        await collect(streams[0])
        fourth = router.submit(greedy([291, 9], 3))
        assert owner(fourth) == "cpu0"  # 1 request there versus 1 on cpu1: first wins the tie
        fifth = router.submit(greedy([291, 9], 3))
        assert owner(fifth) == "cpu1"
        for s in streams[1:]:
            s.cancel()
        await asyncio.gather(*(collect(s) for s in [*streams[1:], fourth, fifth]))
        assert router.running == 0 and router.waiting == 0
    finally:
        router.stop()


async def test_bf16_weights_keep_a_float32_kv_cache_on_cpu():
    from conftest import GOLDEN
    from nanochat_gateway import load_model

    loaded = load_model(GOLDEN / "2026-07", dtype="bfloat16")
    assert loaded.kv_bytes_per_token == loaded.config.kv_bytes_per_token(torch.float32)
    executor = await start_executor(loaded)
    try:
        assert executor.scheduler.cache.k.dtype == torch.float32
        tokens, reasons, _ = await collect(executor.submit(greedy(golden_expected("2026-07")["prompt"][:50], 8)))
        assert reasons == ["length"] and len(tokens[0]) == 8
    finally:
        executor.stop()
