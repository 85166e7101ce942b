"""Request parsing, error mapping, response shapes and openai-SDK compatibility of the API schemas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import openai
import pydantic
import pytest
from aiohttp import web
from openai.types import Completion as SDKCompletion
from openai.types import Model as SDKModel
from openai.types.chat import ChatCompletion as SDKChatCompletion
from openai.types.chat import ChatCompletionChunk as SDKChatCompletionChunk

from nanochat_gateway.api import errors
from nanochat_gateway.api.errors import APIError, error_response, validation_error_to_api_error
from nanochat_gateway.api.openapi import build_openapi
from nanochat_gateway.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Delta,
    Model,
    ModelList,
    TokenLogprob,
    TopLogprob,
    Usage,
    dump,
    dump_chunk,
)

MODEL = "nanochat-d20"
BASE: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({**BASE, **fields})


def api_error_for(model: type[pydantic.BaseModel], body: dict[str, Any]) -> APIError:
    with pytest.raises(pydantic.ValidationError) as info:
        model.model_validate(body)
    return validation_error_to_api_error(info.value)


# --- a stand-in server so the real openai SDK talks to our JSON over real HTTP -----------------

Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeGateway:
    """An aiohttp server that records request bodies and answers with ``respond``."""

    client: openai.AsyncOpenAI
    sent: list[dict[str, Any]] = field(default_factory=list)
    respond: Responder | None = None


@pytest.fixture
async def gateway(aiohttp_server: Any) -> AsyncIterator[FakeGateway]:
    async def handle(request: web.Request) -> web.StreamResponse:
        # `fake` is bound below, before the first request arrives.
        if request.can_read_body:
            fake.sent.append(await request.json())
        assert fake.respond is not None
        return await fake.respond(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    fake = FakeGateway(
        openai.AsyncOpenAI(api_key="unused", base_url=str(server.make_url("/v1")), max_retries=0)
    )
    yield fake
    await fake.client.close()


def json_reply(text: str, status: int = 200) -> Responder:
    async def respond(_: web.Request) -> web.StreamResponse:
        return web.Response(text=text, status=status, content_type="application/json")

    return respond


def sse_reply(events: list[str]) -> Responder:
    async def respond(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in [*events, "[DONE]"]:
            await response.write(f"data: {event}\r\n\r\n".encode())
        await response.write_eof()
        return response

    return respond


def make_completion(content: str = "Hello!", finish_reason: str = "stop") -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-1",
        created=1_700_000_000,
        model=MODEL,
        choices=[ChatChoice(index=0, message=AssistantMessage(content=content), finish_reason=finish_reason)],
        usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7),
    )


def make_chunks(pieces: list[str], *, include_usage: bool = False) -> list[ChatCompletionChunk]:
    """The chunk sequence the server streams: role delta, content deltas, empty final delta[, usage]."""
    common = {"id": "chatcmpl-1", "created": 1_700_000_000, "model": MODEL}
    chunks = [
        ChatCompletionChunk(
            **common, choices=[ChunkChoice(index=0, delta=Delta(role="assistant", content=""))]
        )
    ]
    chunks += [
        ChatCompletionChunk(**common, choices=[ChunkChoice(index=0, delta=Delta(content=p))]) for p in pieces
    ]
    chunks.append(
        ChatCompletionChunk(**common, choices=[ChunkChoice(index=0, delta=Delta(), finish_reason="stop")])
    )
    if include_usage:
        chunks.append(
            ChatCompletionChunk(
                **common, choices=[], usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7)
            )
        )
    return chunks


# === requests: what clients really send ==========================================================


async def test_sdk_chat_request_parses(gateway: FakeGateway) -> None:
    gateway.respond = json_reply(dump(make_completion()))
    await gateway.client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}],
            },
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Again", "name": "bob"},
        ],
        max_completion_tokens=64,
        max_tokens=10,
        temperature=0.7,
        top_p=0.9,
        n=2,
        stop="\n\n",
        seed=1234,
        logit_bias={"50256": -100},
        presence_penalty=0.5,
        user="u-1",
        extra_body={"top_k": 40, "some_vendor_flag": True},
    )
    request = ChatCompletionRequest.model_validate(gateway.sent[0])
    assert [m.role for m in request.messages] == ["developer", "user", "assistant", "user"]
    assert request.messages[1].text() == "Hello\nthere"
    assert request.messages[3].name == "bob"
    assert request.effective_max_tokens() == 64
    assert request.stop_sequences() == ["\n\n"]
    assert request.token_logit_bias() == {50256: -100.0}
    assert (request.n, request.seed, request.top_k) == (2, 1234, 40)
    assert request.unknown_fields() == ["some_vendor_flag"]
    assert request.include_usage is False


async def test_sdk_streaming_request_with_usage_parses(gateway: FakeGateway) -> None:
    gateway.respond = sse_reply(
        [dump_chunk(c, include_usage=True) for c in make_chunks(["a"], include_usage=True)]
    )
    stream = await gateway.client.chat.completions.create(
        model=MODEL, messages=BASE["messages"], stream=True, stream_options={"include_usage": True}
    )
    _ = [chunk async for chunk in stream]
    request = ChatCompletionRequest.model_validate(gateway.sent[0])
    assert request.stream and request.include_usage


async def test_sdk_legacy_completion_request_parses(gateway: FakeGateway) -> None:
    reply = Completion(
        id="cmpl-1",
        created=1,
        model=MODEL,
        choices=[CompletionChoice(text=" world", index=0, finish_reason="length")],
        usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
    )
    gateway.respond = json_reply(dump(reply))
    result = await gateway.client.completions.create(
        model=MODEL, prompt="Hello", echo=False, logprobs=2, stop=["."]
    )
    request = CompletionRequest.model_validate(gateway.sent[0])
    assert request.prompts() == ["Hello"]
    assert request.effective_max_tokens() == 16  # OpenAI's default for legacy completions
    assert (request.logprobs, request.stop_sequences()) == (2, ["."])
    assert result.choices[0].text == " world"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [(None, []), ("END", ["END"]), (["a", "b"], ["a", "b"]), (["1", "2", "3", "4"], ["1", "2", "3", "4"])],
)
def test_stop_string_or_list(stop: Any, expected: list[str]) -> None:
    assert chat(stop=stop).stop_sequences() == expected


def test_unknown_fields_are_accepted_and_listed() -> None:
    request = chat(metadata={"k": "v"}, store=False, parallel_tool_calls=True, service_tier="auto")
    assert request.unknown_fields() == ["metadata", "parallel_tool_calls", "service_tier", "store"]
    assert request.model_extra is not None and request.model_extra["store"] is False


def test_null_means_default_for_nullable_openai_fields() -> None:
    request = chat(n=None, stream=None, logprobs=None, temperature=None, tools=None, tool_choice=None)
    assert (request.n, request.stream, request.logprobs, request.temperature) == (1, False, False, None)
    legacy = CompletionRequest.model_validate(
        {"model": MODEL, "prompt": "x", "echo": None, "max_tokens": None}
    )
    assert legacy.echo is False and legacy.effective_max_tokens() is None  # null = up to the context limit


def test_off_forms_of_unsupported_features_are_accepted() -> None:
    request = chat(
        tools=[], tool_choice="none", response_format={"type": "text"}, modalities=["text"], audio=None
    )
    assert request.tools == []


def test_max_tokens_alone_and_neither() -> None:
    assert chat(max_tokens=12).effective_max_tokens() == 12
    assert chat().effective_max_tokens() is None


def test_integers_may_be_written_as_integral_floats() -> None:
    assert chat(n=2.0, max_tokens=8.0).n == 2


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("text", ["text"]), (["text"], ["text"]), ([1, 2, 3], [[1, 2, 3]]), ([[4, 5]], [[4, 5]]), ("", [""]),
     (["a", "b"], ["a", "b"]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_completion_prompt_forms(prompt: Any, expected: Any) -> None:
    assert CompletionRequest.model_validate({"model": MODEL, "prompt": prompt}).prompts() == expected


def test_a_tools_list_validates_with_any_tool_choice() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for choice in (None, "none", "auto", "required"):  # what each choice does is decided when the run is prepared
        assert chat(tools=tools, tool_choice=choice).tools[0].function.name == "f"


# === requests: rejections name the field =========================================================

CHAT_REJECTIONS: list[tuple[str, dict[str, Any], str, str]] = [
    ("temperature above 2", {"temperature": 3}, "temperature", "invalid_value"),
    ("top_p zero", {"top_p": 0}, "top_p", "invalid_value"),
    ("n zero", {"n": 0}, "n", "invalid_value"),
    ("five stops", {"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ("empty stop string", {"stop": ""}, "stop", "invalid_value"),
    ("empty stop in list", {"stop": ["a", ""]}, "stop.1", "invalid_value"),
    ("stop of wrong type", {"stop": 5}, "stop", "invalid_type"),
    ("tool without a function", {"tools": [{"type": "function"}]}, "tools.0.function", "missing_required_parameter"),
    ("bad function name", {"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools.0.function.name",
     "invalid_value"),
    ("tool_choice unknown", {"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ("functions given", {"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
    ("unknown format", {"response_format": {"type": "xml"}}, "response_format", "invalid_value"),
    ("schema without a name", {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format.json_schema.name", "missing_required_parameter"),
    ("tools not a list", {"tools": {"type": "function"}}, "tools", "invalid_type"),
    ("a function message", {"messages": [{"role": "function", "content": "1"}]}, "messages.0.role",
     "unsupported_value"),
    ("a role that is not a string", {"messages": [{"role": ["user"], "content": "1"}]}, "messages.0.role",
     "invalid_value"),
    ("audio output", {"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
    ("audio modality", {"modalities": ["text", "audio"]}, "modalities", "unsupported_value"),
    (
        "prediction",
        {"prediction": {"type": "content", "content": "x"}},
        "prediction",
        "unsupported_parameter",
    ),
    (
        "image content part",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "?"},
                        {"type": "image_url", "image_url": {"url": "u"}},
                    ],
                }
            ]
        },
        "messages.0.content.1.type",
        "unsupported_value",
    ),
    ("unknown role", {"messages": [{"role": "bot", "content": "x"}]}, "messages.0.role", "invalid_value"),
    ("no messages", {"messages": []}, "messages", "invalid_value"),
    (
        "text part without text",
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "messages.0.content.0.text",
        "missing_required_parameter",
    ),
    ("top_logprobs without logprobs", {"top_logprobs": 3}, "top_logprobs", "invalid_value"),
    ("top_logprobs above 20", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    (
        "stream_options without stream",
        {"stream_options": {"include_usage": True}},
        "stream_options",
        "invalid_value",
    ),
    ("logit_bias non-numeric key", {"logit_bias": {"abc": 1}}, "logit_bias", "invalid_value"),
    ("logit_bias value too big", {"logit_bias": {"5": 101}}, "logit_bias.5", "invalid_value"),
    ("seed beyond int64", {"seed": 2**63}, "seed", "invalid_value"),
    ("max_completion_tokens zero", {"max_completion_tokens": 0}, "max_completion_tokens", "invalid_value"),
    ("string as number", {"temperature": "0.5"}, "temperature", "invalid_type"),
    ("bool as integer", {"n": True}, "n", "invalid_type"),
    ("fractional integer", {"max_tokens": 1.5}, "max_tokens", "invalid_type"),
    ("model missing", {"model": None}, "model", "invalid_type"),
]


@pytest.mark.parametrize(
    ("patch", "param", "code"), [c[1:] for c in CHAT_REJECTIONS], ids=[c[0] for c in CHAT_REJECTIONS]
)
def test_chat_rejections_name_the_field(patch: dict[str, Any], param: str, code: str) -> None:
    err = api_error_for(ChatCompletionRequest, {**BASE, **patch})
    assert (err.status, err.type, err.param, err.code) == (400, "invalid_request_error", param, code)
    assert param in err.message


COMPLETION_REJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("empty token prompt", {"prompt": []}, "prompt"),
    ("an empty prompt in a batch", {"prompt": [[1], []]}, "prompt"),
    ("negative token id", {"prompt": [1, -2]}, "prompt.1"),
    ("logprobs above 5", {"logprobs": 6}, "logprobs"),
    ("suffix", {"suffix": "tail"}, "suffix"),
    ("best_of differs from n", {"best_of": 3}, "best_of"),
    ("max_tokens negative", {"max_tokens": -1}, "max_tokens"),
    ("stream_options without stream", {"stream_options": {}}, "stream_options"),
]


@pytest.mark.parametrize(
    ("patch", "param"), [c[1:] for c in COMPLETION_REJECTIONS], ids=[c[0] for c in COMPLETION_REJECTIONS]
)
def test_completion_rejections_name_the_field(patch: dict[str, Any], param: str) -> None:
    err = api_error_for(CompletionRequest, {"model": MODEL, "prompt": "x", **patch})
    assert (err.status, err.param) == (400, param)


def test_best_of_equal_to_n_is_accepted() -> None:
    assert (
        CompletionRequest.model_validate({"model": MODEL, "prompt": "x", "n": 3, "best_of": 3}).best_of == 3
    )


# === validation_error_to_api_error =============================================================


def test_validation_message_is_a_readable_sentence() -> None:
    err = api_error_for(ChatCompletionRequest, {**BASE, "temperature": 3})
    assert err.message == "temperature: Input should be less than or equal to 2 (got 3)"


def test_missing_field_message_and_code() -> None:
    err = api_error_for(ChatCompletionRequest, {"model": MODEL})
    assert (err.param, err.code, err.message) == (
        "messages",
        "missing_required_parameter",
        "Missing required parameter: 'messages'.",
    )


def test_union_mismatch_lists_what_was_expected() -> None:
    err = api_error_for(ChatCompletionRequest, {**BASE, "stop": 5})
    assert err.message == "stop: Input should be a valid string or a valid list (got 5)"


def test_custom_message_does_not_repeat_the_value() -> None:
    err = api_error_for(
        ChatCompletionRequest,
        {**BASE, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
    )
    assert err.message.count("input_audio") == 1
    assert "only 'text' parts" in err.message


def test_body_that_is_not_an_object() -> None:
    err = api_error_for(ChatCompletionRequest, [1, 2])  # type: ignore[arg-type]
    assert (err.status, err.param, err.code) == (400, None, "invalid_type")


# === errors module ===============================================================================


@pytest.mark.parametrize(
    ("err", "status", "type_", "code"),
    [
        (errors.invalid_request("bad", "x"), 400, "invalid_request_error", None),
        (
            errors.not_found("no such model", "model", "model_not_found"),
            404,
            "invalid_request_error",
            "model_not_found",
        ),
        (
            errors.authentication_error("Incorrect API key provided."),
            401,
            "invalid_request_error",
            "invalid_api_key",
        ),
        (errors.rate_limited("slow down", 1.5), 429, "rate_limit_error", "rate_limit_exceeded"),
        (errors.overloaded("busy", 2), 503, "service_unavailable_error", "overloaded"),
        (errors.timeout("too slow"), 504, "timeout_error", "timeout"),
        (errors.payload_too_large(1024), 413, "invalid_request_error", "payload_too_large"),
        (errors.internal_error(), 500, "server_error", None),
        (errors.unavailable("loading"), 503, "service_unavailable_error", "unavailable"),
    ],
)
def test_error_constructors(err: APIError, status: int, type_: str, code: str | None) -> None:
    assert (err.status, err.type, err.code) == (status, type_, code)
    body = err.to_dict()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


def test_retry_after_headers() -> None:
    assert errors.rate_limited("slow down", 1.2).headers == {"Retry-After": "2", "retry-after-ms": "1200"}
    assert errors.overloaded("busy", 0).headers["Retry-After"] == "1"
    assert errors.overloaded("busy", None).headers == {}


def test_error_response_renders_json() -> None:
    response = error_response(errors.overloaded("busy", 3), request_id="req-1")
    assert response.status == 503
    assert response.content_type == "application/json"
    assert response.headers["Retry-After"] == "3" and response.headers["x-request-id"] == "req-1"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {
        "error": {"message": "busy", "type": "service_unavailable_error", "param": None, "code": "overloaded"}
    }


async def test_sdk_reads_our_errors(gateway: FakeGateway) -> None:
    err = api_error_for(ChatCompletionRequest, {**BASE, "temperature": 3})

    async def respond(_: web.Request) -> web.StreamResponse:
        return error_response(err, request_id="req-9")

    gateway.respond = respond
    with pytest.raises(openai.BadRequestError) as info:
        await gateway.client.chat.completions.create(model=MODEL, messages=BASE["messages"], temperature=3)
    assert (info.value.param, info.value.code, info.value.type) == (
        "temperature",
        "invalid_value",
        "invalid_request_error",
    )
    assert info.value.request_id == "req-9"

    async def busy(_: web.Request) -> web.StreamResponse:
        return error_response(errors.overloaded("The server is overloaded.", 1))

    gateway.respond = busy
    with pytest.raises(openai.InternalServerError) as busy_info:
        await gateway.client.models.list()
    assert busy_info.value.status_code == 503 and busy_info.value.code == "overloaded"


# === responses: JSON shapes ======================================================================


def test_stream_delta_shapes() -> None:
    first, middle, last = (json.loads(dump_chunk(c, include_usage=False)) for c in make_chunks(["Hi"]))
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    assert middle["choices"][0]["delta"] == {"content": "Hi"}
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in first


def test_stream_usage_chunks() -> None:
    *content, usage_chunk = (
        json.loads(dump_chunk(c, include_usage=True)) for c in make_chunks(["Hi"], include_usage=True)
    )
    assert all(c["usage"] is None for c in content)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_model_construct_serialises_like_validated_models() -> None:
    built = ChatCompletionChunk.model_construct(
        id="c",
        created=1,
        model=MODEL,
        choices=[ChunkChoice.model_construct(index=0, delta=Delta.model_construct(content="x"))],
    )
    assert json.loads(dump_chunk(built, include_usage=False))["choices"][0]["delta"] == {"content": "x"}


def test_chat_completion_shape() -> None:
    body = json.loads(dump(make_completion()))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello!", "refusal": None}
    assert body["usage"]["total_tokens"] == 7


# === responses: the official openai SDK types accept them ========================================


def test_sdk_validates_chat_completion_with_logprobs() -> None:
    completion = make_completion()
    top = [TopLogprob(token="Hello", logprob=-0.1, bytes=[72, 101, 108, 108, 111])]
    completion.choices[0].logprobs = ChatLogprobs(
        content=[TokenLogprob(token="Hello", logprob=-0.1, bytes=[72, 101, 108, 108, 111], top_logprobs=top)]
    )
    parsed = SDKChatCompletion.model_validate(json.loads(dump(completion)))
    assert parsed.choices[0].message.content == "Hello!"
    assert parsed.choices[0].logprobs is not None and parsed.choices[0].logprobs.content is not None
    assert parsed.choices[0].logprobs.content[0].top_logprobs[0].token == "Hello"
    assert parsed.usage is not None and parsed.usage.total_tokens == 7


def test_sdk_validates_chunks() -> None:
    for chunk in make_chunks(["Hel", "lo"], include_usage=True):
        parsed = SDKChatCompletionChunk.model_validate(json.loads(dump_chunk(chunk, include_usage=True)))
        assert parsed.object == "chat.completion.chunk"


def test_sdk_validates_completion_and_models() -> None:
    completion = Completion(
        id="cmpl-1",
        created=1,
        model=MODEL,
        choices=[
            CompletionChoice(
                text=" there",
                index=0,
                finish_reason="stop",
                logprobs=CompletionLogprobs(
                    tokens=[" there"], token_logprobs=[-0.5], top_logprobs=[{" there": -0.5}], text_offset=[5]
                ),
            )
        ],
        usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
    )
    assert SDKCompletion.model_validate(json.loads(dump(completion))).choices[0].text == " there"
    model = Model(id=MODEL, created=1, owned_by="nanochat")
    assert SDKModel.model_validate(json.loads(dump(model))).owned_by == "nanochat"


async def test_sdk_lists_models(gateway: FakeGateway) -> None:
    gateway.respond = json_reply(dump(ModelList(data=[Model(id=MODEL, created=1, owned_by="me")])))
    assert [m.id async for m in gateway.client.models.list()] == [MODEL]


async def test_sdk_consumes_our_stream(gateway: FakeGateway) -> None:
    gateway.respond = sse_reply(
        [dump_chunk(c, include_usage=True) for c in make_chunks(["Hel", "lo"], include_usage=True)]
    )
    stream = await gateway.client.chat.completions.create(
        model=MODEL, messages=BASE["messages"], stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


async def test_sdk_stream_helper_accumulates_our_chunks(gateway: FakeGateway) -> None:
    # The .stream() helper drops chunks whose object is not exactly "chat.completion.chunk".
    gateway.respond = sse_reply([dump_chunk(c, include_usage=False) for c in make_chunks(["Hel", "lo"])])
    async with gateway.client.chat.completions.stream(model=MODEL, messages=BASE["messages"]) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == "Hello" and final.choices[0].finish_reason == "stop"


# === OpenAPI document ============================================================================


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref" and isinstance(v, str)] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_openapi_document_structure() -> None:
    doc = build_openapi(MODEL)
    json.dumps(doc)  # plain JSON data, servable as is
    assert doc["openapi"].startswith("3.1")
    expected = {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/ready",
        "/stats",
        "/tokenize",
        "/detokenize",
        "/tokenizer_info",
    }
    assert set(doc["paths"]) == expected  # plugin routes (/metrics) come from the plugins themselves
    chat_ok = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat_ok) == {"application/json", "text/event-stream"}
    for ref in _refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # every $ref resolves inside the document
    assert doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["enum"] == [MODEL]


def test_openapi_loads_in_schemathesis() -> None:
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(build_openapi(MODEL))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10


@pytest.mark.parametrize("model", [ChatCompletionRequest, CompletionRequest])
def test_openapi_request_schema_agrees_with_validation(model: type[pydantic.BaseModel]) -> None:
    """Bodies that schemathesis generates from the document are accepted, and invalid ones rejected."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    path = "/v1/chat/completions" if model is ChatCompletionRequest else "/v1/completions"
    operation = schemathesis.openapi.from_dict(build_openapi())[path]["POST"]
    quick = settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))

    @quick
    @given(operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE))
    def accepts_valid(case: Any) -> None:
        model.model_validate(case.body)

    @quick
    @given(operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE))
    def rejects_invalid(case: Any) -> None:
        with pytest.raises(pydantic.ValidationError):
            model.model_validate(case.body)

    accepts_valid()
    rejects_invalid()
