"""Hostile request bodies that used to reach a 500: each now gets a well-formed OpenAI error.

json.dumps escapes a lone surrogate as \\ud800, which json.loads on the server turns back into a
str that UTF-8 cannot encode: any message that quoted it failed to render.
"""

from __future__ import annotations

import gzip
import json

import aiohttp
import pytest
from test_api_errors import assert_openai_error
from test_api_support import USER_HI, post_json

LONE = "\ud800"


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


def chat_body(model: str, **fields: object) -> dict:
    return {"model": model, "messages": USER_HI, "max_tokens": 2, **fields}


@pytest.mark.parametrize("path, body, status", [
    ("/v1/chat/completions", {"model": LONE, "messages": USER_HI}, 400),
    ("/v1/chat/completions", {"messages": [{"role": LONE, "content": "hi"}]}, 400),
    ("/v1/chat/completions", {"stop": 7, "temperature": LONE}, 400),
    ("/v1/chat/completions", {"n": LONE}, 400),
    ("/v1/completions", {"model": LONE, "prompt": "hi"}, 400),
    ("/v1/completions", {"prompt": "hi", "echo": LONE}, 400),
])
async def test_lone_surrogates_in_fields_get_a_json_error(gateway, session, path, body, status):
    if "model" not in body:
        body = {"model": gateway.model_id, "messages": USER_HI, **body} if "chat" in path else \
            {"model": gateway.model_id, **body}
    got, answer, headers = await post_json(session, gateway.url + path, body)
    error = assert_openai_error(got, answer, headers, status)
    assert "\\ud800" in error["message"] or error["param"]


@pytest.mark.parametrize("path, fields", [
    ("/v1/chat/completions", {"stop": LONE}),
    ("/v1/chat/completions", {"stop": ["ok", LONE]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " + LONE}]}),
    ("/v1/chat/completions", {"user": LONE}),
    ("/v1/completions", {"prompt": "hi " + LONE}),
    ("/v1/completions", {"prompt": "hi", "stop": LONE, "suffix": LONE}),
])
async def test_lone_surrogates_in_text_fields_never_reach_a_500(gateway, session, path, fields):
    body = {"model": gateway.model_id, "max_tokens": 2, **fields}
    if "chat" in path:
        body.setdefault("messages", USER_HI)
    else:
        body.setdefault("prompt", "hi")
    got, answer, headers = await post_json(session, gateway.url + path, body)
    assert got in (200, 400), answer
    if got == 400:
        assert_openai_error(got, answer, headers, 400)


async def test_a_lone_surrogate_as_a_field_name_gets_a_json_error(gateway, session):
    body = chat_body(gateway.model_id, temperature={LONE: 1})
    got, answer, headers = await post_json(session, gateway.url + "/v1/chat/completions", body)
    assert_openai_error(got, answer, headers, 400)


async def test_a_temperature_of_1e_38_answers_like_greedy(gateway, session):
    url = gateway.url + "/v1/completions"
    texts = []
    for temperature in (0, 1e-38):
        body = {"model": gateway.model_id, "prompt": "The", "max_tokens": 8, "temperature": temperature}
        got, answer, _ = await post_json(session, url, body)
        assert got == 200, answer
        texts.append(answer["choices"][0]["text"])
    assert texts[1] == texts[0] and "\x00" not in texts[1]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_raw_field(body: dict, field: str, raw: str) -> str:
    """``body`` as JSON text with ``field`` set to the JSON text ``raw``, as sent, unparsed."""
    return json.dumps(body)[:-1] + f', "{field}": {raw}}}'


@pytest.mark.parametrize("depth", [1000, 100_000])
async def test_json_nested_deeper_than_the_limit_gets_400(gateway, session, depth):
    raw = with_raw_field(chat_body(gateway.model_id), "metadata", nested(depth))
    got, answer, headers = await post_json(session, gateway.url + "/v1/chat/completions", raw)
    error = assert_openai_error(got, answer, headers, 400)
    assert error["code"] == "json_too_deep" and "64" in error["message"]


async def test_the_json_depth_limit_is_configurable(start_gateway, session):
    gateway = await start_gateway(**{"limits.max_json_depth": 6})
    url = gateway.url + "/v1/chat/completions"
    body = chat_body(gateway.model_id, max_tokens=1)
    got, answer, _ = await post_json(session, url, with_raw_field(body, "metadata", f'{{"a": {nested(4)}}}'))
    assert got == 200, answer  # the body, metadata and four arrays: depth 6
    got, answer, headers = await post_json(session, url, with_raw_field(body, "metadata", f'{{"a": {nested(5)}}}'))
    assert assert_openai_error(got, answer, headers, 400)["code"] == "json_too_deep"


async def test_numbers_and_logit_bias_keys_with_thousands_of_digits_get_400(gateway, session):
    url = gateway.url + "/v1/chat/completions"
    huge = "9" * 5000
    body = chat_body(gateway.model_id)
    del body["max_tokens"]
    got, answer, headers = await post_json(session, url, with_raw_field(body, "max_tokens", huge))
    assert_openai_error(got, answer, headers, 400)
    got, answer, headers = await post_json(session, url, chat_body(gateway.model_id, logit_bias={huge: 1}))
    error = assert_openai_error(got, answer, headers, 400)
    assert error["param"] == "logit_bias" and len(error["message"]) < 300


@pytest.mark.parametrize("encoding, status", [
    ("identity", 200), ("compress", 415), ("gzip, identity", 415), ("x-custom", 415),
])
async def test_content_encodings_other_than_identity_gzip_and_deflate_get_415(gateway, session, encoding, status):
    body = chat_body(gateway.model_id)
    got, answer, headers = await post_json(session, gateway.url + "/v1/chat/completions", body,
                                           headers={"Content-Encoding": encoding})
    if status == 200:
        assert got == 200, answer
    else:
        error = assert_openai_error(got, answer, headers, 415)
        assert error["code"] == "unsupported_content_encoding"


async def test_a_gzip_body_counts_against_the_size_limit_once_decoded(gateway, session):
    padding = " " * (5 * 2**20)  # 5 MiB of spaces compress to a few KiB
    raw = gzip.compress(json.dumps(chat_body(gateway.model_id)).encode()[:-1] + padding.encode() + b"}")
    assert len(raw) < 64 * 1024
    got, answer, headers = await post_json(session, gateway.url + "/v1/chat/completions", raw,
                                           headers={"Content-Encoding": "gzip"})
    assert assert_openai_error(got, answer, headers, 413)["code"] == "payload_too_large"
