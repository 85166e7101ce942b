"""POST /v1/completions (legacy text completions for base models) against a real server."""

from __future__ import annotations

import asyncio

import aiohttp
from openai import OpenAI
from test_api_support import byte_token, stream_sse


def no_stop(gateway) -> dict[str, int]:
    tok = gateway.state.model.tokenizer
    return {str(tok.assistant_end): -100, str(tok.bos_id): -100}


async def test_string_prompt_gets_bos_and_real_usage(gateway, client):
    tok = gateway.state.model.tokenizer
    text = await client.completions.create(model=gateway.model_id, prompt="Once upon a time", max_tokens=5,
                                           temperature=0, logit_bias=no_stop(gateway))
    assert text.object == "text_completion" and text.id.startswith("cmpl-") and text.model == gateway.model_id
    assert text.system_fingerprint.startswith("fp_") and text.created > 1_700_000_000
    assert text.choices[0].finish_reason == "length" and text.choices[0].index == 0
    assert text.usage.prompt_tokens == 1 + len(tok.encode("Once upon a time"))
    assert text.usage.completion_tokens == 5 and text.usage.total_tokens == text.usage.prompt_tokens + 5


async def test_token_id_prompt_is_used_exactly(gateway, client):
    tok = gateway.state.model.tokenizer
    ids = [tok.bos_id, *tok.encode("Once upon a time")]
    by_text = await client.completions.create(model=gateway.model_id, prompt="Once upon a time", max_tokens=6,
                                              temperature=0)
    by_ids = await client.completions.create(model=gateway.model_id, prompt=ids, max_tokens=6, temperature=0)
    nested = await client.completions.create(model=gateway.model_id, prompt=[ids], max_tokens=6, temperature=0)
    assert by_ids.usage.prompt_tokens == len(ids) == by_text.usage.prompt_tokens
    assert by_ids.choices[0].text == by_text.choices[0].text == nested.choices[0].text


async def test_default_max_tokens_is_16(gateway, client):
    text = await client.completions.create(model=gateway.model_id, prompt="The", logit_bias=no_stop(gateway))
    assert text.usage.completion_tokens == 16


async def test_streaming_through_the_sync_client(gateway):
    sync = OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    args = {"model": gateway.model_id, "prompt": "Hello", "max_tokens": 6, "temperature": 0}

    def run() -> tuple[str, list, str]:
        chunks = list(sync.completions.create(stream=True, stream_options={"include_usage": True}, **args))
        whole = sync.completions.create(**args)
        return "".join(c.choices[0].text for c in chunks if c.choices), chunks, whole.choices[0].text

    streamed, chunks, whole = await asyncio.to_thread(run)
    sync.close()
    assert streamed == whole
    prompt_tokens = 1 + len(gateway.state.model.tokenizer.encode("Hello"))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == prompt_tokens
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-2].choices[0].finish_reason is not None
    assert len({(c.id, c.created) for c in chunks}) == 1


async def test_raw_stream_ends_with_done_and_no_usage_key_by_default(gateway):
    body = {"model": gateway.model_id, "prompt": "Hello", "max_tokens": 3, "stream": True}
    async with aiohttp.ClientSession() as session:
        resp, sse = await stream_sse(session, f"{gateway.base_url}/completions", body)
    assert resp.status == 200 and resp.headers["X-Accel-Buffering"] == "no"
    assert sse.done and not sse.after_done and not sse.errors
    assert all(c["object"] == "text_completion" and "usage" not in c for c in sse.chunks)
    assert sse.chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


async def test_echo_prepends_the_prompt(gateway, client):
    text = await client.completions.create(model=gateway.model_id, prompt="Echo me", max_tokens=3, echo=True,
                                           temperature=0)
    plain = await client.completions.create(model=gateway.model_id, prompt="Echo me", max_tokens=3, temperature=0)
    assert text.choices[0].text == "Echo me" + plain.choices[0].text
    stream = await client.completions.create(model=gateway.model_id, prompt="Echo me", max_tokens=3, echo=True,
                                             temperature=0, stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == text.choices[0].text


async def test_logprobs_and_text_offsets(gateway, client):
    tok = gateway.state.model.tokenizer
    # An ASCII-only completion, so every token's text is whole and offsets can be checked exactly.
    bias = {str(byte_token(tok, c.encode())): 50 for c in "abc"}
    text = await client.completions.create(model=gateway.model_id, prompt="Say", max_tokens=4, logprobs=2,
                                           echo=True, logit_bias=bias, temperature=0)
    choice = text.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    prompt_len = len(tok.encode("Say"))
    assert all(v is not None for v in lp.token_logprobs[:prompt_len])  # the echoed prompt is scored too
    assert len(lp.tokens) == prompt_len + 4
    for token, offset in zip(lp.tokens, lp.text_offset, strict=True):
        assert choice.text[offset : offset + len(token)] == token
    generated = lp.top_logprobs[prompt_len:]
    assert all(len(top) <= 3 and max(top.values()) <= 0 for top in generated)  # 2 alternatives + the token
    assert all(lp_ <= 0 for lp_ in lp.token_logprobs[prompt_len:])
    stream = await client.completions.create(model=gateway.model_id, prompt="Say", max_tokens=4, logprobs=2,
                                             echo=True, logit_bias=bias, temperature=0, stream=True)
    parts = [c.choices[0].logprobs async for c in stream if c.choices[0].logprobs]
    assert [t for p in parts for t in p.tokens] == lp.tokens
    assert [o for p in parts for o in p.text_offset] == lp.text_offset


async def test_n_seed_and_stop(gateway, client):
    args = {"model": gateway.model_id, "prompt": "Seeded", "max_tokens": 12, "temperature": 1,
            "logit_bias": no_stop(gateway)}
    a = await client.completions.create(n=2, seed=7, **args)
    b = await client.completions.create(n=2, seed=7, **args)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and a.usage.completion_tokens == 24
    assert a.choices[0].text != a.choices[1].text
    unseeded = [(await client.completions.create(**args)).choices[0].text for _ in range(2)]
    assert unseeded[0] != unseeded[1]
    full = a.choices[0].text
    stop = full[5:8]
    cut = await client.completions.create(seed=7, stop=stop, **args)
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
