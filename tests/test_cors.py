"""The cors plugin: preflights answered before anything else, headers on every response incl. SSE."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from nanochat_gateway.app import create_app
from nanochat_gateway.config import ConfigError, load_settings
from nanochat_gateway.plugins import Plugin

APP = "https://app.example.com"


class RejectsEverything(Plugin):
    """Stands in for api_keys listed after cors: 401 for every non-OPTIONS request."""

    name = "rejects_everything"

    async def middleware(self, request: web.Request, handler):
        if request.method == "OPTIONS":
            return await handler(request)
        return web.json_response({"error": {"message": "no key", "type": "invalid_request_error",
                                            "param": None, "code": "invalid_api_key"}}, status=401)


async def test_preflight_is_answered_with_204_before_auth(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["cors", f"{__name__}:RejectsEverything"],
                                     "plugins.cors.allow_origins": [APP + "/"], "plugins.cors.max_age": 120})
    headers = {"Origin": APP, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    async with aiohttp.ClientSession() as session:
        async with session.options(f"{gateway.url}/v1/chat/completions", headers=headers) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == APP
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            allowed = resp.headers["Access-Control-Allow-Headers"].lower()
            assert "authorization" in allowed and "content-type" in allowed and "x-api-key" in allowed
            assert resp.headers["Access-Control-Max-Age"] == "120"
            assert resp.headers["Vary"] == "Origin"
        # The 401 the auth stand-in sends is readable by the page: cors runs first.
        async with session.get(f"{gateway.url}/v1/models", headers={"Origin": APP}) as resp:
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == APP
        bad = {**headers, "Origin": "https://evil.example.org"}
        async with session.options(f"{gateway.url}/v1/chat/completions", headers=bad) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert (await resp.json())["error"]["code"] == "cors_origin_not_allowed"
        async with session.get(f"{gateway.url}/v1/models", headers={"Origin": "https://evil.example.org"}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers


async def test_simple_error_and_sse_responses_carry_cors_headers(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["cors", "stop_sequences"]})
    origin = {"Origin": APP}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/v1/models", headers=origin) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            exposed = resp.headers["Access-Control-Expose-Headers"].lower()
            assert "x-request-id" in exposed and "x-ratelimit-remaining-requests" in exposed
        async with session.get(f"{gateway.url}/v1/nothing-here", headers=origin) as resp:
            assert resp.status == 404
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        body = {"model": gateway.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                "stream": True}
        async with session.post(f"{gateway.url}/v1/chat/completions", json=body, headers=origin) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "x-request-id" in resp.headers["Access-Control-Expose-Headers"]
            assert (await resp.read()).rstrip().endswith(b"data: [DONE]")
        async with session.get(f"{gateway.url}/v1/models") as resp:  # no Origin: not a CORS request
            assert "Access-Control-Allow-Origin" not in resp.headers


async def test_wildcard_headers_and_credentials_echo_the_request(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["cors"], "plugins.cors.allow_headers": ["*"],
                                     "plugins.cors.allow_credentials": True})
    headers = {"Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-custom"}
    async with aiohttp.ClientSession() as session, session.options(
        f"{gateway.url}/v1/completions", headers=headers
    ) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == APP  # never "*" with credentials
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert resp.headers["Access-Control-Allow-Headers"] == "x-custom"


def test_an_origin_must_look_like_one():
    settings = load_settings(None, env={}, overrides={"plugins.enabled": ["cors"],
                                                      "plugins.cors.allow_origins": ["example.com"]})
    with pytest.raises(ConfigError, match=r"\[plugins.cors\] allow_origins"):
        create_app(settings)
