"""POST /v1/chat/completions against a real server, through the official openai client and raw HTTP."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from openai import AsyncOpenAI, OpenAI
from test_api_support import USER_HI, byte_token, parse_sse, post_json, script_tokens, stream_sse, wait_until

from nanochat_gateway.model.chat_template import render_for_completion


def rendered_prompt_tokens(gateway, messages) -> int:
    return len(render_for_completion(gateway.state.model.tokenizer, messages))


async def test_non_streaming_response_has_every_field_and_real_usage(gateway, client):
    chat = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=6,
                                                temperature=0)
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    assert chat.model == gateway.model_id and chat.created > 1_700_000_000
    assert chat.system_fingerprint and chat.system_fingerprint.startswith("fp_")
    choice = chat.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.logprobs is None
    assert choice.finish_reason in ("stop", "length")
    usage = chat.usage
    assert usage.prompt_tokens == rendered_prompt_tokens(gateway, USER_HI)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 6
    assert chat._request_id and chat._request_id.startswith("req_")


async def test_sync_client_streaming_and_not(gateway):
    sync = OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    args = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 8, "temperature": 0}
    whole = await asyncio.to_thread(sync.chat.completions.create, **args)

    def streamed() -> tuple[str, list]:
        chunks = list(sync.chat.completions.create(stream=True, **args))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks

    text, chunks = await asyncio.to_thread(streamed)
    assert text == whole.choices[0].message.content  # greedy: streamed and whole agree
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    sync.close()


async def test_stream_framing_role_first_finish_last_then_done(gateway):
    body = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 5, "temperature": 0, "stream": True}
    async with aiohttp.ClientSession() as session:
        resp, sse = await stream_sse(session, f"{gateway.base_url}/chat/completions", body)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["x-request-id"].startswith("req_")
    assert sse.done and not sse.after_done and not sse.errors
    chunks = sse.chunks
    assert {(c["id"], c["created"], c["object"], c["model"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "chat.completion.chunk", gateway.model_id)}
    assert all(c["system_fingerprint"].startswith("fp_") and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = chunks[-1]["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == "length"
    middle = [c["choices"][0] for c in chunks[1:-1]]
    assert middle and all(set(ch["delta"]) == {"content"} and ch["finish_reason"] is None for ch in middle)


async def test_include_usage_adds_a_usage_chunk_before_done(gateway, client):
    stream = await client.chat.completions.create(
        model=gateway.model_id, messages=USER_HI, max_tokens=7, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks[:-1])
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == 7
    assert final.usage.prompt_tokens == rendered_prompt_tokens(gateway, USER_HI)
    assert final.usage.total_tokens == final.usage.prompt_tokens + 7


async def test_n_choices_streaming_and_not(gateway, client):
    chat = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=4, n=3,
                                                temperature=1, seed=3, logit_bias=_no_stop_bias(gateway))
    assert [c.index for c in chat.choices] == [0, 1, 2]
    assert chat.usage.completion_tokens == 12 and {c.finish_reason for c in chat.choices} == {"length"}
    stream = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=4, n=3,
                                                  temperature=1, seed=3, stream=True,
                                                  logit_bias=_no_stop_bias(gateway),
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert [c.index for c in chunks[0].choices] == [0, 1, 2]  # every choice is in the first chunk
    texts = ["", "", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in chat.choices]  # same seed, same choices
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


async def test_stop_sequence_cuts_the_text_streaming_and_not(gateway, client):
    args = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 40, "temperature": 0,
            "logit_bias": _no_stop_bias(gateway)}
    full = (await client.chat.completions.create(**args)).choices[0].message.content
    stop = full[12:15]
    expected = full[: full.index(stop)]
    chat = await client.chat.completions.create(stop=[stop, "never-seen-xyz"], **args)
    assert chat.choices[0].message.content == expected and chat.choices[0].finish_reason == "stop"
    stream = await client.chat.completions.create(stop=stop, stream=True, **args)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_seed_reproduces_and_no_seed_varies(gateway, client):
    args = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 24, "temperature": 1}
    seeded = [(await client.chat.completions.create(seed=1234, **args)).choices[0].message.content
              for _ in range(2)]
    assert seeded[0] == seeded[1]
    other = (await client.chat.completions.create(seed=4321, **args)).choices[0].message.content
    assert other != seeded[0]
    fresh = [(await client.chat.completions.create(**args)).choices[0].message.content for _ in range(2)]
    assert fresh[0] != fresh[1]  # absent seed: a fresh random seed per request, never a fixed one


async def test_logprobs_streaming_and_not(gateway, client):
    args = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 5, "temperature": 0,
            "logprobs": True, "top_logprobs": 3}
    chat = await client.chat.completions.create(**args)
    entries = chat.choices[0].logprobs.content
    assert len(entries) == chat.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3 and isinstance(entry.bytes, list)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy picks the top token
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                 reverse=True)
    stream = await client.chat.completions.create(stream=True, **args)
    streamed = [e for c in [c async for c in stream] for ch in c.choices if ch.logprobs
                for e in ch.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]
    plain = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=2)
    assert plain.choices[0].logprobs is None


async def test_lenient_inputs_are_accepted(gateway, client):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again", "name": "bob"},
    ]
    chat = await client.chat.completions.create(
        model=gateway.model_id, messages=messages, max_completion_tokens=3, temperature=0.7, top_p=0.9,
        presence_penalty=0.5, frequency_penalty=0.5, user="someone", tool_choice="none",
        response_format={"type": "text"}, extra_body={"top_k": 20, "some_future_field": {"x": 1}},
    )
    assert chat.usage.completion_tokens <= 3
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello\nthere"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Again"}]
    assert chat.usage.prompt_tokens == rendered_prompt_tokens(gateway, expected)


async def test_max_completion_tokens_wins_over_max_tokens(gateway, client):
    chat = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=9,
                                                max_completion_tokens=2, logit_bias=_no_stop_bias(gateway))
    assert chat.usage.completion_tokens == 2 and chat.choices[0].finish_reason == "length"


def _no_stop_bias(gateway) -> dict[str, int]:
    tok = gateway.state.model.tokenizer
    return {str(tok.assistant_end): -100, str(tok.bos_id): -100}


async def test_logit_bias_forces_a_token(gateway, client):
    tok = gateway.state.model.tokenizer
    token = byte_token(tok, b"Q")
    chat = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=4,
                                                logit_bias={str(token): 100})
    assert chat.choices[0].message.content == "QQQQ"


@pytest.mark.parametrize("name", ["user_start", "user_end", "assistant_start", "python_end", "output_end"])
async def test_special_tokens_never_leak_into_content(gateway, client, name):
    tok = gateway.state.model.tokenizer
    special = getattr(tok, name)
    chat = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=4,
                                                logit_bias={str(special): 100}, temperature=0)
    assert chat.choices[0].message.content == "" and chat.usage.completion_tokens == 4


@pytest.mark.parametrize("name", ["assistant_end", "bos_id"])
async def test_end_tokens_finish_with_stop_and_no_text(gateway, client, name):
    special = getattr(gateway.state.model.tokenizer, name)
    chat = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=4,
                                                logit_bias={str(special): 100})
    choice = chat.choices[0]
    assert choice.message.content == "" and choice.finish_reason == "stop"
    assert chat.usage.completion_tokens == 1  # the end token itself counts, as the engine ran it


@pytest.mark.parametrize(("mode", "expected"), [("inline", "A<<1+2=3>>B"), ("hidden", "AB"), ("raw", "A1+23B")])
async def test_calculator_calls_render_as_configured(start_gateway, monkeypatch, mode, expected):
    gateway = await start_gateway(**{"model.tool_calls": mode})
    tok = gateway.state.model.tokenizer
    expr = tok.encode("1+2")
    script = [byte_token(tok, b"A"), tok.python_start, *expr, tok.python_end, byte_token(tok, b"B"),
              tok.assistant_end]
    restart = script_tokens(monkeypatch, script)
    async with AsyncOpenAI(base_url=gateway.base_url, api_key="unused") as client:
        chat = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=20)
        restart()
        stream = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=20,
                                                      stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert chat.choices[0].message.content == expected and streamed == expected
    assert "<|" not in streamed


async def test_streamed_text_arrives_as_soon_as_a_character_completes(gateway, monkeypatch):
    tok = gateway.state.model.tokenizer
    # "é" is two bytes; as separate tokens the first alone must not produce text (nor U+FFFD).
    script = [byte_token(tok, b"\xc3"), byte_token(tok, b"\xa9"), byte_token(tok, b"x"), tok.assistant_end]
    script_tokens(monkeypatch, script)
    body = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 10, "stream": True, "logprobs": True}
    async with aiohttp.ClientSession() as session:
        _, sse = await stream_sse(session, f"{gateway.base_url}/chat/completions", body)
    # With logprobs every token gets its own chunk, so each chunk shows what that token released.
    per_token = [(c["choices"][0]["delta"].get("content"), len(c["choices"][0]["logprobs"]["content"]))
                 for c in sse.chunks[1:] if c["choices"][0]["logprobs"]]
    assert per_token == [("", 1), ("é", 1), ("x", 1), ("", 1)]


async def test_keepalive_comments_while_waiting_in_the_queue(start_gateway):
    gateway = await start_gateway(**{"engine.max_batch_size": 1, "server.sse_keepalive_s": 0.1})
    executor = gateway.state.router.executors[0]
    long = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 300, "temperature": 0,
            "logit_bias": _no_stop_bias(gateway)}
    queued = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 2, "stream": True}
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(post_json(session, f"{gateway.base_url}/chat/completions", long))
        await wait_until(lambda: executor.running == 1, timeout=2)
        async with session.post(f"{gateway.base_url}/chat/completions", json=queued) as resp:
            raw = await resp.text()
        assert (await first)[0] == 200
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b]
    first_token = next(i for i, b in enumerate(blocks) if '"content":"' in b and '"content":""' not in b)
    # Pings come while the request waits behind the long one, before its first token.
    assert sum(b.startswith(": ping") for b in blocks[:first_token]) >= 2
    assert parse_sse(raw).done
