"""POST /tokenize, POST /detokenize and GET /tokenizer_info against a real server, in vLLM's
shapes, as lm-evaluation-harness's remote tokenizer uses them."""

from __future__ import annotations

import hashlib

import aiohttp
import jinja2
from openai import AsyncOpenAI


async def call(gateway, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    async with aiohttp.ClientSession() as session, \
            session.request(method, f"{gateway.url}{path}", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_tokenize_a_prompt(gateway):
    tok = gateway.state.model.tokenizer
    status, body = await call(gateway, "POST", "/tokenize", {"model": gateway.model_id, "prompt": "Hello world"})
    assert status == 200
    assert body == {"count": 1 + len(tok.encode("Hello world")), "max_model_len": 2048,
                    "tokens": [tok.bos_id, *tok.encode("Hello world")], "token_strs": None}
    # As lm-eval's remote tokenizer asks: no <|bos|>, and special token names read as their ids.
    status, body = await call(gateway, "POST", "/tokenize", {"prompt": "<|assistant_end|>x", "add_special_tokens": False,
                                                             "return_token_strs": True})
    assert status == 200 and body["tokens"] == [tok.assistant_end, *tok.encode("x")]
    assert body["token_strs"] == ["<|assistant_end|>", "x"]


async def test_tokenize_messages_gives_the_ids_a_chat_request_uses(gateway):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello,"}]
    status, body = await call(gateway, "POST", "/tokenize", {"model": gateway.model_id, "messages": messages})
    assert status == 200
    async with AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        args = {"model": gateway.model_id, "max_tokens": 6, "temperature": 0}
        chat = await client.chat.completions.create(messages=messages, **args)
        text = await client.completions.create(prompt=body["tokens"], **args)
    assert chat.usage.prompt_tokens == body["count"] and chat.choices[0].message.content == text.choices[0].text
    status, closed = await call(gateway, "POST", "/tokenize", {"messages": messages, "add_generation_prompt": True})
    tok = gateway.state.model.tokenizer
    assert closed["tokens"] == [*body["tokens"], tok.assistant_end, tok.assistant_start]


async def test_detokenize_round_trips(gateway):
    tok = gateway.state.model.tokenizer
    ids = [tok.bos_id, *tok.encode("Grüße, 世界")]
    status, body = await call(gateway, "POST", "/detokenize", {"model": gateway.model_id, "tokens": ids})
    assert status == 200 and body == {"prompt": "<|bos|>Grüße, 世界"}


async def test_tokenizer_info_and_its_chat_template(gateway):
    status, info = await call(gateway, "GET", "/tokenizer_info")
    tok = gateway.state.model.tokenizer
    assert status == 200 and info["tokenizer_class"] == "NanochatTokenizer"
    assert (info["bos_token"], info["eos_token"], info["model_max_length"]) == ("<|bos|>", "<|assistant_end|>", 2048)
    assert info["special_tokens"]["<|user_start|>"] == tok.user_start and info["vocab_size"] == tok.vocab_size
    # A client rendering the template and tokenizing the text gets the server's own chat ids.
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "developer", "content": "Now in words."}]
    rendered = jinja2.Environment().from_string(info["chat_template"]).render(messages=messages,
                                                                               add_generation_prompt=True)
    _, by_text = await call(gateway, "POST", "/tokenize", {"prompt": rendered, "add_special_tokens": False})
    _, by_messages = await call(gateway, "POST", "/tokenize", {"messages": messages})
    assert by_text["tokens"] == by_messages["tokens"]


async def test_bad_tokenizer_requests_are_openai_errors(gateway):
    cases = [
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, None),
        ("/tokenize", {}, 400, None),
        ("/tokenize", {"model": "gpt-4o", "prompt": "a"}, 404, "model"),
        ("/tokenize", {"messages": [{"role": "assistant", "content": "a"}]}, 400, "messages.0.role"),
        ("/detokenize", {"tokens": [10**9]}, 400, "tokens"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens.0"),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
    ]
    for path, body, expected, param in cases:
        status, answer = await call(gateway, "POST", path, body)
        assert status == expected, (path, body, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"}
        if param:
            assert answer["error"]["param"] == param, (path, body, answer)


async def test_tokenizer_endpoints_need_a_key_like_the_v1_routes(start_gateway):
    key = "ncg-tokenize-test"
    gateway = await start_gateway(**{"plugins.enabled": ["api_keys"], "plugins.api_keys": {
        "keys": {"alice": "sha256:" + hashlib.sha256(key.encode()).hexdigest()}}})
    for method, path, body in (("POST", "/tokenize", {"prompt": "a"}), ("POST", "/detokenize", {"tokens": [1]}),
                               ("GET", "/tokenizer_info", None)):
        status, _ = await call(gateway, method, path, body)
        assert status == 401, path
        status, _ = await call(gateway, method, path, body, headers={"Authorization": f"Bearer {key}"})
        assert status == 200, path
