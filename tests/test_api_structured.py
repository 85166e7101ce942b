"""Structured outputs over HTTP: response_format json_object and json_schema, forced tool
calls, the SDK's parse helpers, and the errors, with the random-weights tiny demo model.

The demo model never writes JSON by chance, so every valid reply here is the grammar's work.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import aiohttp
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from test_api_support import USER_HI, parse_sse, post_json

from nanochat_gateway.bench.structured import RECORD_SCHEMA
from nanochat_gateway.model.chat_template import render_for_completion

SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "record", "schema": RECORD_SCHEMA, "strict": True}}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]},
                                                        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                       "required": ["city", "days"], "additionalProperties": False},
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer", "maximum": 999},
                                                        "b": {"type": "integer", "maximum": 999}},
                       "required": ["a", "b"], "additionalProperties": False},
    },
}


@pytest.fixture
async def gateway(start_gateway):
    return await start_gateway(**{"engine.max_batch_size": 8})


def closing_bias(gateway) -> dict[str, int]:
    """+8 on tokens holding a quote or a closing brace (but no opening one).

    A random model samples one of a 4096-token vocabulary, so it would close an open string
    about once per few hundred tokens and json_object replies (whose strings are unbounded)
    would mostly end on max_tokens. The bias only changes which allowed token is likely; the
    grammar alone decides what is allowed.
    """
    tok = gateway.state.model.tokenizer
    ids = [t for t in range(tok.vocab_size)
           if not tok.is_special(t) and b"{" not in (raw := tok.token_bytes(t)) and (b'"' in raw or b"}" in raw)]
    return {str(t): 8 for t in ids[:300]}


async def one_reply(client, gateway, *, stream: bool, **kwargs) -> tuple[str, str]:
    """(text, finish_reason) of a single-choice request, streamed or not."""
    args = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 300, **kwargs}
    if not stream:
        chat = await client.chat.completions.create(**args)
        return chat.choices[0].message.content, chat.choices[0].finish_reason
    text, finish = [], None
    async for chunk in await client.chat.completions.create(stream=True, **args):
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(text), finish


async def test_fifty_json_object_replies_are_json_objects(gateway, client):
    bias = closing_bias(gateway)
    replies = await asyncio.gather(*(
        one_reply(client, gateway, stream=seed % 2 == 1, seed=seed, logit_bias=bias,
                  response_format={"type": "json_object"})
        for seed in range(50)
    ))
    for text, finish in replies:
        assert finish == "stop", text
        assert isinstance(json.loads(text), dict)
    assert len({text for text, _ in replies}) > 10


async def test_fifty_schema_replies_validate(gateway, client):
    replies = await asyncio.gather(*(
        one_reply(client, gateway, stream=seed % 2 == 1, seed=seed, response_format=SCHEMA_FORMAT)
        for seed in range(50)
    ))
    for text, finish in replies:
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), RECORD_SCHEMA)
    assert len({text for text, _ in replies}) == 50


class Place(BaseModel):
    city: str = Field(max_length=12)
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Pet(BaseModel):
    name: str = Field(max_length=12)
    kind: Literal["cat", "dog", "bird"]
    age: int = Field(ge=0, le=30)
    home: Place


async def test_sdk_parse_returns_the_pydantic_object(gateway, client):
    completion = await client.chat.completions.parse(model=gateway.model_id, messages=USER_HI, response_format=Pet,
                                                     max_tokens=300, seed=1)
    message = completion.choices[0].message
    assert isinstance(message.parsed, Pet) and message.parsed == Pet.model_validate_json(message.content)


async def test_sdk_parse_reports_a_reply_cut_by_max_tokens(gateway, client):
    with pytest.raises(openai.LengthFinishReasonError):
        await client.chat.completions.parse(model=gateway.model_id, messages=USER_HI, response_format=Pet,
                                            max_tokens=3, seed=1)


@pytest.mark.parametrize("stream", [False, True])
async def test_small_max_tokens_ends_with_length(gateway, client, stream):
    text, finish = await one_reply(client, gateway, stream=stream, seed=2, max_tokens=4,
                                   response_format=SCHEMA_FORMAT)
    assert finish == "length" and text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_a_top_p_below_float32_still_samples_inside_the_grammar(gateway, client):
    # top_p 1e-300 is 0.0 in float32; the nucleus must still hold the most likely allowed token.
    text, finish = await one_reply(client, gateway, stream=False, seed=3, max_tokens=4, top_p=1e-300,
                                   response_format={"type": "json_object"})
    assert finish == "length" and text.startswith("{")


async def test_n_three_choices_all_validate(gateway, client):
    chat = await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=300, n=3,
                                                seed=4, response_format=SCHEMA_FORMAT)
    assert [c.finish_reason for c in chat.choices] == ["stop"] * 3
    replies = [json.loads(c.message.content) for c in chat.choices]
    for reply in replies:
        jsonschema.validate(reply, RECORD_SCHEMA)
    assert len({json.dumps(r) for r in replies}) == 3


async def test_constrained_and_free_requests_share_the_batch(gateway, client):
    free = [one_reply(client, gateway, stream=False, seed=s, max_tokens=30) for s in range(3)]
    constrained = [one_reply(client, gateway, stream=True, seed=s, response_format=SCHEMA_FORMAT) for s in range(3)]
    results = await asyncio.gather(*free, *constrained)
    assert all(finish == "length" for _, finish in results[:3])
    for text, finish in results[3:]:
        assert finish == "stop"
        jsonschema.validate(json.loads(text), RECORD_SCHEMA)


async def test_seeded_structured_replies_repeat(gateway, client):
    first = await one_reply(client, gateway, stream=False, seed=9, response_format=SCHEMA_FORMAT)
    again = await one_reply(client, gateway, stream=True, seed=9, response_format=SCHEMA_FORMAT)
    assert first == again


async def test_completions_accept_response_format_as_an_extension(gateway, client):
    text = await client.completions.create(model=gateway.model_id, prompt="A record:", max_tokens=300, seed=3,
                                           extra_body={"response_format": SCHEMA_FORMAT})
    assert text.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text.choices[0].text), RECORD_SCHEMA)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("response_format", "words"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}}, "not"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "sometimes"}}}, "sometimes"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/gone"}}}, "gone"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "description": "x" * 70000}}},
         "larger than"),
        ({"type": "json_schema"}, "json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}, "name"),
        ({"type": "xml"}, "type must be"),
    ],
)
async def test_unusable_formats_are_a_400_naming_response_format(gateway, response_format, words):
    body = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 5, "response_format": response_format}
    async with aiohttp.ClientSession() as session:
        status, error, _ = await post_json(session, f"{gateway.base_url}/chat/completions", body)
    assert status == 400, error
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"].startswith("response_format")
    assert words in error["error"]["message"]


async def test_the_sdk_sees_a_bad_request(gateway, client):
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=gateway.model_id, messages=USER_HI, max_tokens=5,
                                             response_format={"type": "json_schema",
                                                              "json_schema": {"name": "x", "schema": {"not": {}}}})
    assert err.value.body["param"] == "response_format"


# ------------------------------------------------------------------ tool calls
async def call_choice(client, gateway, *, stream: bool, **kwargs):
    """The one choice of a tool-call request; streamed through the SDK's stream helper, which
    assembles delta.tool_calls into the same message."""
    args = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 200, **kwargs}
    if not stream:
        return (await client.chat.completions.create(**args)).choices[0]
    async with client.chat.completions.stream(**args) as events:
        return (await events.get_final_completion()).choices[0]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_named_function_is_called(gateway, client, stream):
    choice = await call_choice(client, gateway, stream=stream, seed=5, tools=[WEATHER, ADD],
                               tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("stream", [False, True])
async def test_required_chooses_among_the_tools(gateway, client, stream):
    names = set()
    for seed in range(6):
        choice = await call_choice(client, gateway, stream=stream, seed=seed, tools=[WEATHER, ADD],
                                   tool_choice="required")
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        tool = next(t for t in (WEATHER, ADD) if t["function"]["name"] == call.function.name)
        jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
        names.add(call.function.name)
    assert names == {"get_weather", "add"}


class Weather(BaseModel):
    city: Literal["Paris", "Oslo"]
    days: int = Field(ge=1, le=7)


async def test_sdk_parse_with_a_pydantic_function_tool(gateway, client):
    completion = await client.chat.completions.parse(
        model=gateway.model_id, messages=USER_HI, max_tokens=200, seed=3,
        tools=[openai.pydantic_function_tool(Weather)], tool_choice={"type": "function", "function": {"name": "Weather"}},
    )
    call = completion.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, Weather)


async def test_tool_results_are_rendered_into_the_next_turn(gateway, client):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"},
    ]
    chat = await client.chat.completions.create(model=gateway.model_id, messages=messages, max_tokens=3,
                                                temperature=0)
    tok = gateway.state.model.tokenizer
    expected = render_for_completion(tok, [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": ['{"name": "get_weather", "arguments": {"city":"Oslo"}}']},
        {"role": "tool", "content": "12 C, rain"},
    ])
    assert chat.usage.prompt_tokens == len(expected)
    assert chat.choices[0].message.tool_calls is None


async def test_results_follow_their_calls_whatever_order_they_come_in(gateway, client):
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": "add", "arguments": f'{{"a":{i},"b":1}}'}}
             for i in (1, 2)]
    messages = [
        {"role": "user", "content": "Add twice"},
        {"role": "assistant", "content": "Sure.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_2", "content": "3"},
        {"role": "tool", "tool_call_id": "call_1", "content": "2"},
        {"role": "assistant", "content": "2 and 3."},
        {"role": "user", "content": "Thanks"},
    ]
    chat = await client.chat.completions.create(model=gateway.model_id, messages=messages, max_tokens=2)
    expected = render_for_completion(gateway.state.model.tokenizer, [
        {"role": "user", "content": "Add twice"},
        {"role": "assistant", "content": "Sure.", "tool_calls": ['{"name": "add", "arguments": {"a":1,"b":1}}',
                                                              '{"name": "add", "arguments": {"a":2,"b":1}}']},
        {"role": "tool", "content": "2"},
        {"role": "tool", "content": "3"},
        {"role": "assistant", "content": "2 and 3."},
        {"role": "user", "content": "Thanks"},
    ])
    assert chat.usage.prompt_tokens == len(expected)


async def test_a_forced_call_is_described_in_the_system_text(gateway, client):
    messages = [{"role": "system", "content": "Be brief."}, *USER_HI]
    chat = await client.chat.completions.create(model=gateway.model_id, messages=messages, max_tokens=1, tools=[ADD],
                                                tool_choice="required")
    parameters = json.dumps(ADD["function"]["parameters"])
    system = f"Be brief.\n\nCall the function add, replying with its arguments as JSON.\n- add, arguments (JSON schema): {parameters}"
    expected = render_for_completion(gateway.state.model.tokenizer, [{"role": "system", "content": system}, *USER_HI])
    assert chat.usage.prompt_tokens == len(expected)


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "required"),  # explicit "auto" stays refused
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice", "nope"),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}],
          "tool_choice": "required"}, "tools.0.function.parameters", "not"),
    ],
)
async def test_unusable_tool_requests_are_a_400(gateway, extra, param, words):
    body = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 5, **extra}
    async with aiohttp.ClientSession() as session:
        status, error, _ = await post_json(session, f"{gateway.base_url}/chat/completions", body)
    assert status == 400, error
    assert error["error"]["param"] == param and words in error["error"]["message"]


async def test_tool_call_stream_framing(gateway):
    body = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 200, "seed": 2, "stream": True,
            "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    async with aiohttp.ClientSession() as session, session.post(f"{gateway.base_url}/chat/completions",
                                                                json=body) as resp:
        sse = parse_sse(await resp.text())
    deltas = [c["choices"][0] for c in sse.chunks if c["choices"]]
    calls = [d["delta"]["tool_calls"][0] for d in deltas if d["delta"].get("tool_calls")]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert all("id" not in c and "name" not in c["function"] for c in calls[1:])
    arguments = "".join(c["function"]["arguments"] for c in calls)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert deltas[-1]["finish_reason"] == "tool_calls"
    assert not any(d["delta"].get("content") for d in deltas)
