"""rate_limit plugin, memory backend: a real gateway on loopback with a frozen limiter clock."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from nanochat_gateway.plugins import API_KEY_NAME, CLIENT_ADDRESS, Plugin
from plugins.rate_limit import RateLimit, RateLimitSettings
from plugins.rate_limit_backends import PERIOD_US, format_duration, gcra, quota


class Recorder(Plugin):
    """Sees what the limiter decided: events, outcomes, identities; can end choices early."""

    name = "recorder"

    def __init__(self, settings, context):
        super().__init__(settings, context)
        self.events: list[tuple[str, dict]] = []
        self.statuses: list[int] = []
        self.clients: list[tuple[str | None, str | None]] = []
        self.stop_early = False

    async def middleware(self, request, handler):
        self.clients.append((request.get(API_KEY_NAME), request.get(CLIENT_ADDRESS)))
        return await handler(request)

    def on_text(self, ctx, event):
        if self.stop_early and event.text:
            event.stop = True  # one token is enough: the rest of max_tokens goes unused

    async def on_response(self, ctx, result):
        self.statuses.append(result.status)

    def on_event(self, event, labels):
        self.events.append((event, labels))


RECORDER = "test_rate_limit:Recorder"


def plugin_of(gateway, name: str):
    return next(p for p in gateway.state.plugins if p.name == name)


def freeze(gateway) -> list[float]:
    """Replace the memory backend's clock; returns the cell to move time with."""
    now = [1000.0]
    plugin_of(gateway, "rate_limit").backend.clock = lambda: now[0]
    return now


async def complete(session, gateway, headers=None, **body):
    body = {"model": gateway.model_id, "prompt": "hi", "max_tokens": 1, "temperature": 0, **body}
    async with session.post(f"{gateway.url}/v1/completions", json=body, headers=headers) as resp:
        return resp.status, resp.headers, await resp.json()


def remaining(headers, kind: str) -> int:
    return int(headers[f"x-ratelimit-remaining-{kind}"])


def test_gcra_and_durations():
    # limit 3 per minute: a burst of 3, then one every 20 s; Retry-After is the wait for the next one
    tat, now = 0.0, 0.0
    for _ in range(3):
        ok, tat, _ = gcra(tat, now, 1, 3)
        assert ok
    assert quota(tat, now, 3) == (0, PERIOD_US)
    assert gcra(tat, now, 1, 3) == (False, tat, 20_000_000)
    assert gcra(tat, now + 20_000_000, 1, 3)[0]
    assert gcra(0.0, 0.0, 4, 3)[2] == -1  # more than the whole limit: never
    assert [format_duration(s) for s in (0, 0.0004, 0.12, 1, 1.5, 60, 360, 3725.25)] == [
        "0s", "1ms", "120ms", "1s", "1.5s", "1m0s", "6m0s", "1h2m5.25s"]


def test_forwarded_for_only_from_trusted_proxies():
    settings = RateLimitSettings(requests_per_minute=1, trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    context = SimpleNamespace(settings=SimpleNamespace(server=SimpleNamespace(request_timeout_s=1.0)))
    limiter = RateLimit(settings, context)

    def address(peer: str, xff: str | None) -> str:
        headers = {"X-Forwarded-For": xff} if xff else {}
        return limiter.client_address(make_mocked_request("POST", "/", headers=headers).clone(remote=peer))

    assert address("127.0.0.1", "1.2.3.4") == "1.2.3.4"
    assert address("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.1.2.3") == "1.2.3.4"  # right-most untrusted hop
    assert address("::ffff:127.0.0.1", "1.2.3.4") == "1.2.3.4"
    assert address("127.0.0.1", "10.0.0.1, 10.0.0.2") == "10.0.0.1"
    assert address("127.0.0.1", None) == "127.0.0.1"
    assert address("5.5.5.5", "1.2.3.4") == "5.5.5.5"  # an untrusted peer cannot choose its identity


async def test_requests_per_minute(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["rate_limit", RECORDER],
                                     "plugins.rate_limit": {"requests_per_minute": 3}})
    now = freeze(gateway)
    async with aiohttp.ClientSession() as session:
        for left, reset in [(2, "20s"), (1, "40s")]:
            status, headers, _ = await complete(session, gateway)
            assert status == 200
            assert (headers["x-ratelimit-limit-requests"], remaining(headers, "requests")) == ("3", left)
            assert headers["x-ratelimit-reset-requests"] == reset
            assert "x-ratelimit-limit-tokens" not in headers  # that limit is off
        body = {"model": gateway.model_id, "prompt": "hi", "max_tokens": 1, "stream": True}
        async with session.post(f"{gateway.url}/v1/completions", json=body) as resp:  # SSE gets them too
            assert resp.status == 200 and remaining(resp.headers, "requests") == 0
            assert resp.headers["x-ratelimit-reset-requests"] == "1m0s"
            await resp.read()
        status, headers, body = await complete(session, gateway)
        assert status == 429
        assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded"
        assert headers["Retry-After"] == "20" and headers["retry-after-ms"] == "20000"
        assert remaining(headers, "requests") == 0
        assert plugin_of(gateway, "recorder").events[-1] == ("rate_limit_rejected", {"limit": "requests"})
        now[0] += 19.5
        status, headers, _ = await complete(session, gateway)
        assert status == 429 and headers["Retry-After"] == "1" and headers["retry-after-ms"] == "500"
        now[0] += 0.5
        status, headers, _ = await complete(session, gateway)
        assert status == 200 and remaining(headers, "requests") == 0
        async with session.get(f"{gateway.url}/v1/models") as resp:  # not a limited path
            assert resp.status == 200 and "x-ratelimit-limit-requests" not in resp.headers


async def test_tokens_reserved_then_corrected(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["rate_limit", RECORDER],
                                     "plugins.rate_limit": {"tokens_per_minute": 1000, "max_concurrent": 1}})
    freeze(gateway)
    recorder = plugin_of(gateway, "recorder")
    async with aiohttp.ClientSession() as session:
        status, headers, body = await complete(session, gateway, max_tokens=1200)
        assert status == 429 and "Retry-After" not in headers and headers["x-should-retry"] == "false"
        assert "limit is 1000" in body["error"]["message"]
        assert recorder.events[-1] == ("rate_limit_rejected", {"limit": "tokens"})
        assert remaining(headers, "tokens") == 1000

        # the slot of the refused request was released (max_concurrent = 1)
        recorder.stop_early = True
        status, headers, body = await complete(session, gateway, max_tokens=400)
        used = body["usage"]["total_tokens"]
        assert status == 200 and used < 100
        assert remaining(headers, "tokens") == 1000 - used  # the unused reservation came back before headers
        assert headers["x-ratelimit-reset-tokens"] == format_duration(used * 60 / 1000)

        stream = {"model": gateway.model_id, "prompt": "hi", "max_tokens": 300, "stream": True,
                  "stream_options": {"include_usage": True}}
        async with session.post(f"{gateway.url}/v1/completions", json=stream) as resp:
            prompt = body["usage"]["prompt_tokens"]
            assert remaining(resp.headers, "tokens") == 1000 - used - prompt - 300  # reserved while streaming
            events = [line for line in (await resp.text()).splitlines() if line.startswith("data: {")]
        used += json.loads(events[-1].removeprefix("data: "))["usage"]["total_tokens"]

        recorder.stop_early = False
        status, headers, body = await complete(session, gateway, max_tokens=40)
        used += body["usage"]["total_tokens"]
        assert used > 40
        assert status == 200 and remaining(headers, "tokens") == 1000 - used

        # not enough left now: 429 with the wait GCRA computes for the missing tokens
        status, headers, body = await complete(session, gateway, max_tokens=1000 - used + 30 - prompt)
        assert status == 429, body
        assert headers["retry-after-ms"] == str(round(30 * 60_000 / 1000))
        assert headers["Retry-After"] == str(math.ceil(30 * 60 / 1000))


async def test_concurrency_released_after_disconnect(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["rate_limit", RECORDER],
                                     "plugins.rate_limit": {"max_concurrent": 1}})
    recorder = plugin_of(gateway, "recorder")
    long = {"model": gateway.model_id, "prompt": "hi", "max_tokens": 1900, "temperature": 0, "stream": True}
    async with aiohttp.ClientSession() as session:
        status, _, body = await complete(session, gateway, max_tokens=1000000)  # a 400 also frees its slot
        assert status == 400
        resp = await session.post(f"{gateway.url}/v1/completions", json=long)
        await resp.content.readline()  # generating now
        status, headers, body = await complete(session, gateway)
        assert status == 429 and headers["Retry-After"] == "1"
        assert recorder.events[-1] == ("rate_limit_rejected", {"limit": "concurrency"})
        started = time.monotonic()
        resp.close()  # the client goes away mid-stream
        while (status := (await complete(session, gateway))[0]) == 429:
            assert time.monotonic() - started < 3, "the slot of the disconnected stream was not released"
            await asyncio.sleep(0.05)
        assert status == 200
    assert 499 in recorder.statuses  # freed by the disconnect, long before 1900 tokens were done


async def test_identity_and_ordering_after_api_keys(start_gateway):
    keys = {"alice": "sha256:" + hashlib.sha256(b"alice-key").hexdigest(),
            "bob": "sha256:" + hashlib.sha256(b"bob-key").hexdigest()}
    gateway = await start_gateway(**{"plugins.enabled": ["api_keys", "rate_limit", RECORDER],
                                     "plugins.api_keys": {"keys": keys},
                                     "plugins.rate_limit": {"requests_per_minute": 3}})
    freeze(gateway)
    alice, bob = {"Authorization": "Bearer alice-key"}, {"x-api-key": "bob-key"}
    async with aiohttp.ClientSession() as session:
        assert remaining((await complete(session, gateway, alice))[1], "requests") == 2
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer wrong"}):
            status, resp_headers, _ = await complete(session, gateway, headers)
            assert status == 401 and "x-ratelimit-remaining-requests" not in resp_headers
        assert remaining((await complete(session, gateway, alice))[1], "requests") == 1  # 401s cost nothing
        assert remaining((await complete(session, gateway, bob))[1], "requests") == 2  # per key, not per IP
    recorder = plugin_of(gateway, "recorder")
    assert [name for name, _ in recorder.clients] == ["alice", "alice", "bob"]
    assert {client for _, client in recorder.clients} == {"127.0.0.1"}


async def test_identity_by_forwarded_address(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["rate_limit", RECORDER],
                                     "plugins.rate_limit": {"requests_per_minute": 1,
                                                            "trusted_proxies": ["127.0.0.0/8"]}})
    freeze(gateway)
    async with aiohttp.ClientSession() as session:
        async def status_for(xff: str) -> int:
            return (await complete(session, gateway, {"X-Forwarded-For": xff}))[0]

        assert await status_for("1.1.1.1") == 200
        assert await status_for("1.1.1.1") == 429
        assert await status_for("2.2.2.2, 127.0.0.2") == 200  # another client behind a second proxy
        assert await status_for("2.2.2.2, 1.1.1.1") == 429  # a forged left part changes nothing
    assert [c for _, c in plugin_of(gateway, "recorder").clients] == ["1.1.1.1", "2.2.2.2"]


@pytest.mark.parametrize("table", [{"trusted_proxies": ["not-an-ip"]}, {"backend": "sql"}])
def test_bad_settings(table):
    from nanochat_gateway.app import create_app
    from nanochat_gateway.config import ConfigError, load_settings

    settings = load_settings(None, env={}, overrides={"plugins.enabled": ["rate_limit"], "plugins.rate_limit": table})
    with pytest.raises(ConfigError, match=r"plugins\.rate_limit"):
        create_app(settings)
