"""Hostile request bodies that used to reach a 500: each now gets a well-formed OpenAI error.

json.dumps escapes a lone surrogate as \\ud800, which json.loads on the server turns back into a
str that UTF-8 cannot encode: any message that quoted it failed to render.
"""

from __future__ import annotations

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
