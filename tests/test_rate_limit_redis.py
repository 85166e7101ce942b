"""rate_limit plugin, redis backend: a real redis-server per test, shared by real gateways."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from nanochat_gateway.plugins import Plugin

KEY = "alice-key"
DIGEST = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
ALICE = {"Authorization": f"Bearer {KEY}"}


class Events(Plugin):
    """Collects the events plugins report."""

    name = "events"

    def __init__(self, settings, context):
        super().__init__(settings, context)
        self.events: list[tuple[str, dict]] = []

    def on_event(self, event, labels):
        self.events.append((event, labels))


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (no persistence)."""

    def __init__(self, binary: str, port: int):
        self.port, self.url = port, f"redis://127.0.0.1:{port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_server():
    binary = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)), None)
    if binary is None:
        message = "redis-server is not installed"
        if os.environ.get("CI"):
            pytest.fail(message + " (required when CI is set)")
        pytest.skip(message)
    server = RedisServer(binary, free_port())
    try:
        yield server
    finally:
        server.stop()


def redis_settings(server: RedisServer, **limits) -> dict:
    return {"plugins.enabled": ["api_keys", "rate_limit", "test_rate_limit_redis:Events"],
            "plugins.api_keys": {"keys": {"alice": DIGEST}},
            "plugins.rate_limit": {"backend": "redis", "redis_url": server.url, **limits}}


def plugin_of(gateway, name: str):
    return next(p for p in gateway.state.plugins if p.name == name)


async def complete(session, gateway, **body):
    body = {"model": gateway.model_id, "prompt": "hi", "max_tokens": 1, "temperature": 0, **body}
    async with session.post(f"{gateway.url}/v1/completions", json=body, headers=ALICE) as resp:
        return resp.status, resp.headers, await resp.json()


async def test_limits_through_redis(start_gateway, redis_server):
    gateway = await start_gateway(**redis_settings(
        redis_server, requests_per_minute=4, tokens_per_minute=600, max_concurrent=1))
    async with aiohttp.ClientSession() as session:
        status, headers, body = await complete(session, gateway, max_tokens=700)
        assert status == 429 and headers["x-should-retry"] == "false"  # more than the whole token limit
        status, headers, body = await complete(session, gateway, max_tokens=20)
        assert status == 200 and headers["x-ratelimit-remaining-requests"] == "2"
        used = body["usage"]["total_tokens"]
        # Redis' clock keeps running: tokens flow back at 10 per second
        assert 600 - used <= int(headers["x-ratelimit-remaining-tokens"]) <= 600 - used + 10

        long = {"model": gateway.model_id, "prompt": "hi", "max_tokens": 500, "temperature": 0, "stream": True}
        resp = await session.post(f"{gateway.url}/v1/completions", json=long, headers=ALICE)
        assert resp.headers["x-ratelimit-remaining-requests"] == "1"
        await resp.content.readline()
        status, headers, _ = await complete(session, gateway)
        assert status == 429 and headers["Retry-After"] == "1"  # concurrency: the slot is taken
        assert headers["x-ratelimit-remaining-requests"] == "1"  # and refused requests cost nothing
        resp.close()
        started = time.monotonic()
        while (status := (await complete(session, gateway))[0]) == 429:
            assert time.monotonic() - started < 3, "the slot of the disconnected stream was not released"
            await asyncio.sleep(0.05)
        status, headers, _ = await complete(session, gateway)
        assert status == 429 and 14 <= int(headers["Retry-After"]) <= 15  # GCRA: next slot 15 s after a burst
    events = plugin_of(gateway, "events").events
    assert {labels["limit"] for name, labels in events if name == "rate_limit_rejected"} == {
        "tokens", "concurrency", "requests"}

    import redis

    client = redis.Redis(port=redis_server.port)
    keys = client.keys("ncg:rl:*")
    assert keys and all(client.pttl(key) > 0 for key in keys)  # nothing stays in Redis forever
    client.close()


async def test_two_gateways_share_one_limit(start_gateway, redis_server):
    one = await start_gateway(**redis_settings(redis_server, requests_per_minute=3))
    two = await start_gateway(**redis_settings(redis_server, requests_per_minute=3))
    async with aiohttp.ClientSession() as session:
        statuses = [(await complete(session, gateway))[0] for gateway in (one, two, one, two, one)]
    assert statuses == [200, 200, 200, 429, 429]


async def test_redis_outage(start_gateway, redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="plugins.rate_limit")
    open_gw = await start_gateway(**redis_settings(redis_server, requests_per_minute=100))
    closed_gw = await start_gateway(**redis_settings(redis_server, requests_per_minute=100,
                                                     on_redis_error="fail_closed", redis_timeout_s=0.1))
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await complete(session, open_gw)
        assert status == 200 and headers["x-ratelimit-remaining-requests"] == "99"
        redis_server.stop()
        started = time.monotonic()
        for _ in range(3):
            status, headers, _ = await complete(session, open_gw)
            assert status == 200 and "x-ratelimit-remaining-requests" not in headers
            status, headers, body = await complete(session, closed_gw)
            assert status == 503 and body["error"]["code"] == "rate_limiter_unavailable"
        assert time.monotonic() - started < 3  # an outage must not stall requests
    assert ("rate_limit_backend_error", {"policy": "fail_open"}) in plugin_of(open_gw, "events").events
    assert ("rate_limit_backend_error", {"policy": "fail_closed"}) in plugin_of(closed_gw, "events").events
    assert plugin_of(open_gw, "rate_limit").backend_errors >= 3
    warnings = [r for r in caplog.records if "backend failed" in r.getMessage()]
    assert 1 <= len(warnings) <= 2  # one report per gateway, not one per request


def test_redis_missing_is_a_config_error(monkeypatch):
    from nanochat_gateway.app import create_app
    from nanochat_gateway.config import ConfigError, load_settings

    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now raises ImportError
    settings = load_settings(None, env={}, overrides={"plugins.enabled": ["rate_limit"],
                                                      "plugins.rate_limit": {"backend": "redis"}})
    with pytest.raises(ConfigError, match=r"nanochat-gateway\[redis\]"):
        create_app(settings)
