"""32 streaming clients at once: every stream completes, ends with [DONE], and its usage adds up."""

from __future__ import annotations

import asyncio

import aiohttp
from openai import AsyncOpenAI
from test_api_support import engine_idle, stream_sse, wait_until

from nanochat_gateway.model.chat_template import render_for_completion

CLIENTS = 32


def request_for(gateway, i: int) -> dict:
    # Different prompts, budgets and seeds, so rows join and leave the batch at different steps.
    return {"model": gateway.model_id, "messages": [{"role": "user", "content": f"client {i} says hi"}],
            "max_tokens": 6 + i % 11, "temperature": 1, "seed": i, "stream": True, "logprobs": True,
            "stream_options": {"include_usage": True}}


def check_stream(gateway, body: dict, resp, sse) -> str:
    """Assert one client's stream is complete and consistent; return its text."""
    assert resp.status == 200 and sse.done and not sse.after_done and not sse.errors
    chunks = sse.chunks
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and all(c["usage"] is None for c in chunks[:-1])
    tokens = sum(len(c["choices"][0]["logprobs"]["content"]) for c in chunks
                 if c["choices"] and c["choices"][0]["logprobs"])
    assert usage["completion_tokens"] == tokens  # one logprob entry per generated token
    if finishes[0] == "length":
        assert tokens == body["max_tokens"]
    prompt = render_for_completion(gateway.state.model.tokenizer, body["messages"])
    assert usage["prompt_tokens"] == len(prompt)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


async def test_32_concurrent_streams_all_complete_with_correct_usage(start_gateway):
    gateway = await start_gateway(**{"engine.max_batch_size": 8})
    bodies = [request_for(gateway, i) for i in range(CLIENTS)]
    url = f"{gateway.base_url}/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:
        results = await asyncio.gather(*(stream_sse(session, url, body) for body in bodies))
        texts = [check_stream(gateway, body, resp, sse) for body, (resp, sse) in zip(bodies, results, strict=True)]
        # Seeded sampling does not depend on what else shared the batch: rerun a few alone.
        for i in (0, 13, 31):
            resp, sse = await stream_sse(session, url, bodies[i])
            assert check_stream(gateway, bodies[i], resp, sse) == texts[i]
    await wait_until(engine_idle(gateway), timeout=1)


async def test_concurrent_openai_clients_mixed_streaming_and_not(start_gateway):
    gateway = await start_gateway(**{"engine.max_batch_size": 4})
    async with AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:

        async def one(i: int) -> int:
            args = {"model": gateway.model_id, "messages": [{"role": "user", "content": str(i)}], "max_tokens": 5}
            if i % 2:
                chat = await client.chat.completions.create(**args)
                return chat.usage.completion_tokens
            stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                          **args)
            return [c async for c in stream][-1].usage.completion_tokens

        counts = await asyncio.gather(*(one(i) for i in range(12)))
    assert all(1 <= c <= 5 for c in counts)
    await wait_until(engine_idle(gateway), timeout=1)
