"""The request_log plugin: one JSON line per request, with fields and without secrets."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
import pytest
from aiohttp import web

from nanochat_gateway.logs import JsonFormatter
from nanochat_gateway.plugins import API_KEY_NAME, Plugin

SECRET_PROMPT = "my very secret prompt about zebras"
SECRET_KEY = "sk-do-not-log-this-0123456789"


class NamesTheKey(Plugin):
    """Stands in for api_keys: names the caller's key."""

    name = "names_the_key"

    async def middleware(self, request: web.Request, handler):
        request[API_KEY_NAME] = "alice"
        return await handler(request)


@pytest.fixture
def log_lines():
    """The JSON lines written to the nanochat_gateway.request logger during the test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("nanochat_gateway.request")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def post_chat(session, gateway, **body) -> aiohttp.ClientResponse:
    url, model, tokenizer = gateway.url, gateway.model_id, gateway.state.model.tokenizer
    # Biasing the end tokens away keeps every completion at max_tokens ("length").
    no_end = {str(tokenizer.bos_id): -100, str(tokenizer.assistant_end): -100}
    payload = {"model": model, "messages": [{"role": "user", "content": SECRET_PROMPT}], "max_tokens": 4,
               "temperature": 0, "logit_bias": no_end, **body}
    headers = {"Authorization": f"Bearer {SECRET_KEY}", "User-Agent": "test-agent/1.0", "x-request-id": "req-log-1"}
    async with session.post(f"{url}/v1/chat/completions?token={SECRET_KEY}", json=payload, headers=headers) as resp:
        await resp.read()
        return resp


async def test_one_line_per_request_with_fields_and_no_secrets(start_gateway, log_lines):
    gateway = await start_gateway(**{
        "plugins.enabled": ["request_log", f"{__name__}:NamesTheKey", "stop_sequences"],
    })
    async with aiohttp.ClientSession() as session:
        resp = await post_chat(session, gateway)
        assert resp.status == 200
        async with session.get(f"{gateway.url}/health") as health:  # skipped by default
            assert health.status == 200
        async with session.get(f"{gateway.url}/v1/models") as models:
            assert models.status == 200
        async with session.post(f"{gateway.url}/v1/chat/completions", json={"model": "tiny"}) as bad:
            assert bad.status == 400
        async with session.post(f"{gateway.url}/v1/chat/completions", json={
            "model": gateway.model_id, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
        }) as ok:
            usage_json = (await ok.json())["usage"]

    lines = log_lines()
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/v1/chat/completions", 200),
        ("GET", "/v1/models", 200),
        ("POST", "/v1/chat/completions", 400),
        ("POST", "/v1/chat/completions", 200),
    ]
    first = lines[0]
    assert first["logger"] == "nanochat_gateway.request" and first["level"] == "info"
    assert first["request_id"] == "req-log-1"
    assert first["key_name"] == "alice"
    assert first["client"] == "127.0.0.1"
    assert first["user_agent"] == "test-agent/1.0"
    assert first["model"] == gateway.model_id and first["endpoint"] == "chat.completions"
    assert first["completion_tokens"] == 4 and first["prompt_tokens"] > 0
    assert first["finish_reasons"] == ["length"]
    assert first["generation_status"] == 200
    assert first["latency_ms"] > 0 and first["ttft_ms"] is not None
    assert "prompt" not in first
    raw = json.dumps(lines)
    assert SECRET_PROMPT not in raw and "zebras" not in raw
    assert SECRET_KEY not in raw  # neither the header nor the query string
    assert "model" not in lines[1]  # not a generation
    assert lines[3]["prompt_tokens"] == usage_json["prompt_tokens"]
    assert lines[3]["completion_tokens"] == usage_json["completion_tokens"]


async def test_log_prompts_adds_the_rendered_prompt_truncated(start_gateway, log_lines):
    gateway = await start_gateway(**{
        "plugins.enabled": ["request_log"],
        "plugins.request_log.log_prompts": True,
        "plugins.request_log.max_logged_chars": 40,
        "plugins.request_log.skip_paths": [],
    })
    async with aiohttp.ClientSession() as session:
        await post_chat(session, gateway, stream=True)
        async with session.get(f"{gateway.url}/health"):
            pass
    first, health = log_lines()
    assert first["stream"] is True and first["finish_reasons"] == ["length"]
    assert first["prompt"].endswith("…") and len(first["prompt"]) == 41
    assert health["path"] == "/health"
    assert SECRET_KEY not in json.dumps(first)


async def test_keyvalue_format_renders_fields(start_gateway):
    from nanochat_gateway.logs import KeyValueFormatter

    gateway = await start_gateway(**{"plugins.enabled": ["request_log"]})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    logger = logging.getLogger("nanochat_gateway.request")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/v1/models"):
            pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    line = stream.getvalue().strip()
    assert "path=/v1/models" in line and "status=200" in line and "latency_ms=" in line
