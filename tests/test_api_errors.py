"""Malformed and unservable requests: every failure is a JSON error in OpenAI's shape, never a traceback.

Raw aiohttp sends exactly the bytes under test; a few cases go through the openai SDK to check it
maps our errors onto its exception classes.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from test_api_support import USER_HI, engine_idle, parse_sse, post_json, stream_sse, wait_until

from nanochat_gateway.model.chat_template import render_for_completion
from nanochat_gateway.plugins import Plugin


@pytest.fixture
async def gateway(start_gateway):
    return await start_gateway(**{"engine.max_batch_size": 4})


def assert_openai_error(status: int, body: dict, headers, expected_status: int) -> dict:
    """The error envelope with all four keys, JSON content type and a request id."""
    assert status == expected_status, body
    assert headers["Content-Type"].startswith("application/json")
    assert headers["x-request-id"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    assert "Traceback" not in error["message"]
    return error


def chat(model: str, **fields) -> dict:
    return {"model": model, "messages": USER_HI, "max_tokens": 2, **fields}


# (fields merged into a valid chat body, expected param); None deletes the field.
CHAT_CASES = [
    ({"model": None}, "model"),
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"temperature": "0.5"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 9}, "n"),  # over [limits] max_n = 8
    ({"n": 1.5}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5000}, "max_tokens"),  # over [limits] max_tokens_limit = 4096
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"max_completion_tokens": 5000}, "max_completion_tokens"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"seed": "42"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"user": 5}, "user"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"stop": 7}, "stop"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias.5"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"),  # outside the vocabulary
    ({"top_logprobs": 3}, "top_logprobs"),  # needs logprobs: true
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # needs stream: true
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, None),  # no tool_choice: the tools are ignored
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools.0.function"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}},
     "response_format"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "tool", "content": "1", "tool_call_id": "x"}]}, "messages.0.tool_call_id"),
    ({"messages": [{"role": "tool", "content": "1"}]}, "messages.0.role"),
    ({"messages": [{"role": "function", "content": "1", "name": "f"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0.type"),
    ({"messages": [{"role": "user"}]}, None),  # a user turn without content is just empty text: accepted
    ({"messages": [{"role": "assistant", "content": "a"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "messages.2.role"),
    ({"messages": [{"role": "user", "content": "a"}], "continue_final_message": True}, "continue_final_message"),
]

COMPLETION_CASES = [
    ({"prompt": None}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[1], []]}, "prompt"),
    ({"prompt": ["a"] * 65}, "prompt"),  # more than [limits] max_prompts
    ({"prompt": [999999]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"logprobs": 6}, "logprobs"),
    ({"suffix": "tail"}, "suffix"),
    ({"best_of": 2}, "best_of"),
    ({"echo": "yes"}, "echo"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
]


def merged(base: dict, fields: dict) -> dict:
    body = {**base, **fields}
    return {k: v for k, v in body.items() if v is not None}


async def test_invalid_chat_requests_are_400_naming_the_field(gateway):
    async with aiohttp.ClientSession() as session:
        for fields, param in CHAT_CASES:
            status, body, headers = await post_json(session, f"{gateway.base_url}/chat/completions",
                                                    merged(chat(gateway.model_id), fields))
            if param is None:
                assert status == 200, (fields, body)
                continue
            error = assert_openai_error(status, body, headers, 400)
            assert error["type"] == "invalid_request_error", (fields, error)
            assert (error["param"] or "").startswith(param), (fields, error)
    assert engine_idle(gateway)()


async def test_invalid_completion_requests_are_400_naming_the_field(gateway):
    base = {"model": gateway.model_id, "prompt": "x", "max_tokens": 2}
    async with aiohttp.ClientSession() as session:
        for fields, param in COMPLETION_CASES:
            status, body, headers = await post_json(session, f"{gateway.base_url}/completions", merged(base, fields))
            error = assert_openai_error(status, body, headers, 400)
            assert (error["param"] or "").startswith(param), (fields, error)


async def test_unsupported_features_say_so(gateway):
    async with aiohttp.ClientSession() as session:
        status, body, headers = await post_json(session, f"{gateway.base_url}/chat/completions",
                                                chat(gateway.model_id, functions=[{"name": "f"}]))
    error = assert_openai_error(status, body, headers, 400)
    assert error["code"] == "unsupported_parameter" and "use tools" in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"\xff\xfe", b'"text"', b"null"])
async def test_bodies_that_are_not_a_json_object(gateway, raw):
    async with aiohttp.ClientSession() as session:
        for path in ("chat/completions", "completions"):
            status, body, headers = await post_json(session, f"{gateway.base_url}/{path}", raw)
            assert_openai_error(status, body, headers, 400)


async def test_prompts_longer_than_the_context_are_refused_not_truncated(gateway):
    executor = gateway.state.router.executors[0]
    context = executor.max_seq_len
    tok = gateway.state.model.tokenizer
    async with aiohttp.ClientSession() as session:
        # The prompt fits alone, but not together with max_tokens.
        prompt_len = len(render_for_completion(tok, USER_HI))
        status, body, headers = await post_json(session, f"{gateway.base_url}/chat/completions",
                                                chat(gateway.model_id, max_tokens=context - prompt_len + 1))
        error = assert_openai_error(status, body, headers, 400)
        assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
        ids = [tok.bos_id] + [byte_token_a(tok)] * (context - 10)
        status, body, headers = await post_json(session, f"{gateway.base_url}/completions",
                                                {"model": gateway.model_id, "prompt": ids, "max_tokens": 16})
        error = assert_openai_error(status, body, headers, 400)
        assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
        status, body, _ = await post_json(session, f"{gateway.base_url}/completions",
                                          {"model": gateway.model_id, "prompt": ids, "max_tokens": 9})
        assert status == 200 and body["usage"]["prompt_tokens"] == context - 9  # exactly fits: all of it used
        # Without max_tokens the server default shrinks to what is left; with no room left it is a 400.
        status, body, _ = await post_json(session, f"{gateway.base_url}/completions",
                                          {"model": gateway.model_id, "prompt": ids + [ids[1]] * 6, "max_tokens": None})
        assert status == 200 and body["usage"]["completion_tokens"] <= 3, body
        status, body, headers = await post_json(session, f"{gateway.base_url}/completions",
                                                {"model": gateway.model_id, "prompt": ids + [ids[1]] * 9})
        assert assert_openai_error(status, body, headers, 400)["code"] == "context_length_exceeded"
        long_text = "word " * 3000  # thousands of tokens, far over the context
        status, body, headers = await post_json(session, f"{gateway.base_url}/chat/completions",
                                                chat(gateway.model_id, messages=[{"role": "user",
                                                                                  "content": long_text}]))
        assert assert_openai_error(status, body, headers, 400)["code"] == "context_length_exceeded"


def byte_token_a(tok) -> int:
    return tok.encode("a")[0]


async def test_unknown_model_is_404_model_not_found(gateway):
    async with AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=USER_HI)
        assert info.value.code == "model_not_found" and info.value.param == "model"
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="gpt-4o", prompt="x")
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("gpt-4o")
        assert info.value.code == "model_not_found" and info.value.request_id


async def test_sdk_sees_bad_request_with_param(gateway):
    async with AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, temperature=5)
    assert info.value.param == "temperature" and info.value.type == "invalid_request_error"
    assert info.value.request_id and info.value.request_id.startswith("req_")


async def test_unknown_routes_methods_and_oversized_bodies(start_gateway):
    gateway = await start_gateway(**{"server.client_max_size": 2048})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/nope") as resp:
            error = assert_openai_error(resp.status, await resp.json(), resp.headers, 404)
            assert error["code"] == "unknown_url"
        async with session.get(f"{gateway.base_url}/chat/completions") as resp:
            assert_openai_error(resp.status, await resp.json(), resp.headers, 405)
            assert "POST" in resp.headers["Allow"]
        big = chat(gateway.model_id, messages=[{"role": "user", "content": "x" * 5000}])
        status, body, headers = await post_json(session, f"{gateway.base_url}/chat/completions", big)
        assert assert_openai_error(status, body, headers, 413)["code"] == "payload_too_large"


async def test_request_ids_are_returned_and_client_ids_kept(gateway):
    async with aiohttp.ClientSession() as session:
        status, _, headers = await post_json(session, f"{gateway.base_url}/chat/completions", chat(gateway.model_id),
                                             headers={"x-request-id": "trace-123"})
        assert status == 200 and headers["x-request-id"] == "trace-123"
        status, _, headers = await post_json(session, f"{gateway.base_url}/chat/completions", b"{",
                                             headers={"x-request-id": "bad id with spaces"})
        assert status == 400 and headers["x-request-id"].startswith("req_")
        for path in ("/health", "/ready", "/stats", "/v1/models", "/openapi.json", "/missing"):
            async with session.get(f"{gateway.url}{path}") as resp:
                assert resp.headers["x-request-id"], path
        async with session.post(f"{gateway.base_url}/chat/completions",
                                json=chat(gateway.model_id, stream=True)) as resp:
            assert resp.headers["x-request-id"].startswith("req_")
            await resp.read()


async def test_overload_is_503_with_retry_after(start_gateway):
    gateway = await start_gateway(**{"engine.max_batch_size": 1, "engine.max_queue": 1,
                                     "server.retry_after_s": 2})
    executor = gateway.state.router.executors[0]
    long = chat(gateway.model_id, max_tokens=1000, stream=True, logit_bias=no_stop(gateway))
    async with aiohttp.ClientSession() as session:
        running = await session.post(f"{gateway.base_url}/chat/completions", json=long)
        await wait_until(lambda: executor.running == 1, timeout=2)
        queued = asyncio.create_task(session.post(f"{gateway.base_url}/chat/completions", json=long))
        await wait_until(lambda: executor.waiting == 1, timeout=2)
        status, body, headers = await post_json(session, f"{gateway.base_url}/chat/completions",
                                                chat(gateway.model_id))
        error = assert_openai_error(status, body, headers, 503)
        assert error["type"] == "service_unavailable_error" and error["code"] == "overloaded"
        assert headers["Retry-After"] == "2"
        running.close()
        (await queued).close()
    await wait_until(engine_idle(gateway), timeout=2)


async def test_max_queue_zero_serves_free_slots_and_refuses_the_rest(start_gateway):
    gateway = await start_gateway(**{"engine.max_batch_size": 1, "engine.max_queue": 0})
    async with aiohttp.ClientSession() as session:
        status, body, _ = await post_json(session, f"{gateway.base_url}/chat/completions", chat(gateway.model_id))
        assert status == 200, body


def no_stop(gateway) -> dict[str, int]:
    tok = gateway.state.model.tokenizer
    return {str(tok.assistant_end): -100, str(tok.bos_id): -100}


async def test_request_timeout_is_504_or_an_error_event(start_gateway):
    gateway = await start_gateway(**{"server.request_timeout_s": 0.3})
    body = chat(gateway.model_id, max_tokens=2000, logit_bias=no_stop(gateway))
    async with aiohttp.ClientSession() as session:
        status, payload, headers = await post_json(session, f"{gateway.base_url}/chat/completions", body)
        error = assert_openai_error(status, payload, headers, 504)
        assert error["type"] == "timeout_error" and error["code"] == "timeout"
        await wait_until(engine_idle(gateway), timeout=1)
        async with session.post(f"{gateway.base_url}/chat/completions", json={**body, "stream": True}) as resp:
            sse = parse_sse(await resp.text())
    assert resp.status == 200 and sse.done and sse.chunks  # tokens flowed before the deadline
    assert [e["code"] for e in sse.errors] == ["timeout"]
    assert "error" in sse.events[-1]  # the error is the last event before [DONE]
    await wait_until(engine_idle(gateway), timeout=1)


async def test_a_server_error_mid_stream_ends_with_an_error_event_then_done(gateway):
    executor = gateway.state.router.executors[0]
    steps = itertools.count()

    def fail_after_a_few_steps(batch):
        if next(steps) >= 4:
            raise RuntimeError("injected fault")

    executor.hooks.fault_injector = fail_after_a_few_steps
    body = chat(gateway.model_id, max_tokens=50, stream=True, logit_bias=no_stop(gateway))
    async with aiohttp.ClientSession() as session:
        _, sse = await stream_sse(session, f"{gateway.base_url}/chat/completions", body)
    raw = json.dumps(sse.events)
    assert sse.done and not sse.after_done and len(sse.chunks) >= 2
    assert sse.errors == [{"message": "The server had an error while processing your request.",
                           "type": "server_error", "param": None, "code": None}]
    assert "injected fault" not in raw and "Traceback" not in raw
    await wait_until(engine_idle(gateway), timeout=1)

    async with AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=5,
                                                      stream=True)
        with pytest.raises(openai.APIError, match="The server had an error"):
            async for _ in stream:
                pass
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=5)
        assert info.value.status_code == 500 and info.value.body["type"] == "server_error"
    executor.hooks.fault_injector = None
    await wait_until(engine_idle(gateway), timeout=1)


class ExplodingPlugin(Plugin):
    """A plugin with a bug: on_text fails on the third text delta of a request."""

    name = "exploding"

    def on_text(self, ctx, event) -> None:
        seen = ctx.scratch["exploding"] = ctx.scratch.get("exploding", 0) + 1
        if seen >= 3:
            raise RuntimeError("plugin bug")


async def test_an_unexpected_bug_mid_stream_still_ends_the_stream_properly(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["test_api_errors:ExplodingPlugin"]})
    body = chat(gateway.model_id, max_tokens=20, stream=True, logit_bias=no_stop(gateway))
    async with aiohttp.ClientSession() as session:
        resp, sse = await stream_sse(session, f"{gateway.base_url}/chat/completions", body)
        assert resp.status == 200 and sse.done and not sse.after_done
        assert [e["type"] for e in sse.errors] == ["server_error"] and "error" in sse.events[-1]
        status, payload, headers = await post_json(session, f"{gateway.base_url}/chat/completions",
                                                   {**body, "stream": False})
    assert assert_openai_error(status, payload, headers, 500)["type"] == "server_error"
    assert "plugin bug" not in json.dumps(payload)
    await wait_until(engine_idle(gateway), timeout=1)


async def test_n_beyond_the_batch_size_is_a_400_on_n(start_gateway):
    gateway = await start_gateway(**{"engine.max_batch_size": 2})
    async with aiohttp.ClientSession() as session:
        status, body, headers = await post_json(session, f"{gateway.base_url}/chat/completions",
                                                chat(gateway.model_id, n=3))
    error = assert_openai_error(status, body, headers, 400)
    assert error["param"] == "n" and error["code"] == "invalid_value", error
