"""Property tests (hypothesis): whatever JSON a client sends, the answer is a success or an OpenAI error.

One gateway process (the tiny demo model, small token limits) serves every example; each example
changes one field of a valid request (or of its message) to an arbitrary JSON value, or replaces
the whole body. The answer must be a 2xx with the right content type, or a 4xx whose body is
exactly OpenAI's error envelope; never a 5xx, never text/plain, and the gateway logs no traceback.
"""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import test_lifecycle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lifecycle import base_env
from test_rate_limit_redis import free_port

from nanochat_gateway.api.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest

EXAMPLES = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text with every kind of character, and often the ones that broke servers before: lone
# surrogates (json.dumps sends them as \udXXX), NUL, line separators, nanochat's special tokens.
tricky_characters = st.sampled_from(["\ud800", "\udfff", "\x00", "\x7f", "\u2028", "\ufeff"])
plain_text = st.text(st.characters(codec=None, categories=None), max_size=20)
any_text = (plain_text | st.builds(lambda a, c, b: a + c + b, plain_text, tricky_characters, plain_text)
            | st.sampled_from(["<|bos|>", "<|assistant_end|>", "\r\n"]))
json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | any_text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)


def field_names(model: type) -> list[str]:
    return sorted({field.alias or name for name, field in model.model_fields.items()})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, tiny_model_dir) -> Iterator[test_lifecycle.Gateway]:
    tmp = tmp_path_factory.mktemp("properties")
    port = free_port()
    env = base_env(tmp, model__source=str(tiny_model_dir), model__dtype="float32", plugins__enabled="[]",
                   engine__max_tokens="4", limits__max_tokens_limit="16", engine__max_batch_size="8",
                   server__port=str(port))
    process = test_lifecycle.Gateway([sys.executable, "-m", "nanochat_gateway", "serve"], env=env, port=port,
                                     log_path=tmp / "gateway.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.kill()
    assert "Traceback" not in process.log(), process.log()[-4000:]


def post(port: int, path: str, body: bytes) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def check_answer(status: int, content_type: str, body: bytes) -> None:
    assert status < 500, (status, body[:500])
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, body[:200])
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
        assert error["code"] is None or isinstance(error["code"], str)
        assert error["param"] is None or isinstance(error["param"], str)
        return
    assert status == 200
    if content_type.startswith("text/event-stream"):
        events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]"
        for event in events[:-1]:
            json.loads(event)
    else:
        assert content_type.startswith("application/json") and "choices" in json.loads(body)


def send(gateway: test_lifecycle.Gateway, path: str, body: Any) -> None:
    check_answer(*post(gateway.port, path, json.dumps(body).encode()))


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def completion_body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "Hi", "max_tokens": 2}


@pytest.fixture(scope="module")
def model(gateway) -> str:
    return str(test_lifecycle.call(gateway.port, "GET", "/v1/models")[2]["data"][0]["id"])


ENDPOINTS = {"/v1/chat/completions": (ChatCompletionRequest, chat_body),
             "/v1/completions": (CompletionRequest, completion_body)}


@pytest.mark.parametrize("path", list(ENDPOINTS))
@EXAMPLES
@given(data=st.data())
def test_any_value_in_any_request_field(gateway, model, path, data):
    schema, make_body = ENDPOINTS[path]
    body = make_body(model)
    body[data.draw(st.sampled_from(field_names(schema)) | any_text, "field")] = data.draw(json_values, "value")
    send(gateway, path, body)


@EXAMPLES
@given(field=st.sampled_from(field_names(ChatMessage)) | any_text, value=json_values)
def test_any_value_in_any_message_field(gateway, model, field, value):
    body = chat_body(model)
    body["messages"][0][field] = value
    send(gateway, "/v1/chat/completions", body)


@EXAMPLES
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]), body=json_values)
def test_any_json_document_as_the_body(gateway, path, body):
    send(gateway, path, body)


@EXAMPLES
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]), raw=st.binary(max_size=200))
def test_any_bytes_as_the_body(gateway, path, raw):
    check_answer(*post(gateway.port, path, raw))


# JSON text Python's own parser chokes on: nesting past its recursion limit, numbers past int()'s digits.
extreme_json = (st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth)
                | st.integers(1, 6000).map(lambda digits: "9" * digits)
                | st.integers(1, 6000).map(lambda digits: '{"' + "1" * digits + '": 1}'))


@EXAMPLES
@given(field=st.sampled_from(field_names(ChatCompletionRequest)), raw=extreme_json)
def test_extreme_json_in_any_chat_field(gateway, model, field, raw):
    body = chat_body(model)
    body.pop(field, None)
    text = json.dumps(body)[:-1] + f', "{field}": {raw}}}'
    check_answer(*post(gateway.port, "/v1/chat/completions", text.encode()))

