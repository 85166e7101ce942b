"""A client that goes away cancels its generation and frees its slot, wherever the request was.

Each test starts a long generation, drops the connection, and polls the executor until
nothing is running or waiting and no KV slot is held (within a second).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from test_api_support import USER_HI, engine_idle, wait_until
from yarl import URL

from conftest import Gateway
from nanochat_gateway.app import create_app
from nanochat_gateway.config import load_settings

LONG_TOKENS = 1800  # seconds of work for the tiny model: long enough that only a cancel ends it early


class _Site:
    """Enough of aiohttp's TestServer for conftest.Gateway: where the server listens."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    def make_url(self, path: str) -> URL:
        return URL.build(scheme="http", host=self.host, port=self.port, path=path)


@pytest.fixture(params=["cancelling", "not-cancelling"])
async def gateway(request, start_gateway, tiny_model_dir):
    """The gateway with aiohttp's handler cancellation on (as `serve` runs it) and off (run_app's default).

    With cancellation the handler is cancelled when the peer goes away; without it the gateway
    must notice by itself, and both must free the slot.
    """
    overrides = {"engine.max_batch_size": 1}
    if request.param == "cancelling":
        yield await start_gateway(**overrides)
        return
    settings = load_settings(None, env={}, overrides={
        "model.source": str(tiny_model_dir), "model.dtype": "float32", "plugins.enabled": ["stop_sequences"],
        **overrides})
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gateway = Gateway(_Site("127.0.0.1", site._server.sockets[0].getsockname()[1]), app)
    await wait_until(lambda: gateway.state.is_ready, timeout=30)
    yield gateway
    await runner.cleanup()


def long_chat(gateway, **fields) -> dict:
    tok = gateway.state.model.tokenizer
    no_stop = {str(tok.assistant_end): -100, str(tok.bos_id): -100}
    return {"model": gateway.model_id, "messages": USER_HI, "max_tokens": LONG_TOKENS, "logit_bias": no_stop,
            **fields}


async def open_raw(gateway, path: str, body: dict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a POST over a bare socket, so the test decides exactly when the connection closes."""
    host, port = gateway.server.host, gateway.server.port
    reader, writer = await asyncio.open_connection(host, port)
    payload = json.dumps(body).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()
    return reader, writer


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_streaming_client_disconnect_frees_the_slot(gateway, path):
    executor = gateway.state.router.executors[0]
    body = long_chat(gateway, stream=True)
    if path == "/v1/completions":
        body = {k: v for k, v in body.items() if k != "messages"} | {"prompt": "Once"}
    reader, writer = await open_raw(gateway, path, body)
    await reader.readuntil(b"data:")
    await wait_until(lambda: executor.counters.tokens_decoded > 20, timeout=2)  # tokens are flowing
    await close(writer)
    await wait_until(engine_idle(gateway), timeout=1)
    assert executor.counters.tokens_decoded < LONG_TOKENS


async def test_non_streaming_client_disconnect_frees_the_slot(gateway):
    executor = gateway.state.router.executors[0]
    _, writer = await open_raw(gateway, "/v1/chat/completions", long_chat(gateway))
    await wait_until(lambda: executor.counters.tokens_decoded > 20, timeout=2)  # generating, nothing sent yet
    await close(writer)
    await wait_until(engine_idle(gateway), timeout=1)
    assert executor.counters.tokens_decoded < LONG_TOKENS


@pytest.mark.parametrize("stream", [False, True])
async def test_queued_client_disconnect_leaves_the_queue(gateway, stream):
    executor = gateway.state.router.executors[0]
    _, first = await open_raw(gateway, "/v1/chat/completions", long_chat(gateway))
    await wait_until(lambda: executor.running == 1, timeout=2)
    _, queued = await open_raw(gateway, "/v1/chat/completions", long_chat(gateway, stream=stream))
    await wait_until(lambda: executor.waiting == 1, timeout=2)
    await close(queued)
    await wait_until(lambda: executor.waiting == 0, timeout=1)
    assert executor.running == 1  # the other request is untouched
    await close(first)
    await wait_until(engine_idle(gateway), timeout=1)


async def test_aiohttp_client_cancelling_its_request_frees_the_slot(gateway):
    executor = gateway.state.router.executors[0]
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(f"{gateway.base_url}/chat/completions", json=long_chat(gateway)))
        await wait_until(lambda: executor.running == 1, timeout=2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await wait_until(engine_idle(gateway), timeout=1)


async def test_server_keeps_serving_after_disconnects(gateway):
    for _ in range(3):
        reader, writer = await open_raw(gateway, "/v1/chat/completions", long_chat(gateway, stream=True))
        await reader.readuntil(b"data:")
        await close(writer)
    await wait_until(engine_idle(gateway), timeout=1)
    async with aiohttp.ClientSession() as session, session.post(f"{gateway.base_url}/chat/completions",
                            json={"model": gateway.model_id, "messages": USER_HI, "max_tokens": 3}) as resp:
        assert resp.status == 200 and (await resp.json())["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize("stream", [False, True])
async def test_a_batched_request_that_loses_its_client_frees_every_slot_and_queue_entry(gateway, stream):
    executor = gateway.state.router.executors[0]  # one slot: the batch's second prompt waits in the queue
    body = {k: v for k, v in long_chat(gateway, stream=stream).items() if k != "messages"}
    _, writer = await open_raw(gateway, "/v1/completions", body | {"prompt": ["Once", "Twice"]})
    await wait_until(lambda: executor.running == 1 and executor.waiting == 1, timeout=2)
    await close(writer)
    await wait_until(engine_idle(gateway), timeout=1)
    assert executor.counters.tokens_decoded < LONG_TOKENS
