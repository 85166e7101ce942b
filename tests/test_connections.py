"""Hostile connections against the real listener (server.serve on loopback), with raw sockets.

Slow-header, slow-body and idle clients are closed within their [server] limits while normal
requests keep being answered; a response that streams longer than every limit is not cut; the
connection cap holds. Limits are set to about a second so each test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from test_rate_limit_redis import free_port

from nanochat_gateway.app import create_app
from nanochat_gateway.config import load_settings
from nanochat_gateway.server import serve

LIMIT_S = 1.0
SLACK_S = 1.5  # deadlines fire on the event loop of a shared 2-core machine
STREAM_S = 3.5  # longer than every limit put together
HEAD = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


class Served:
    """A gateway run by server.serve() on a free loopback port, with raw-socket helpers."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, raw: bytes = HEAD, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """Send ``raw`` on a new connection and read one whole response."""
        reader, writer = await self.connect()
        try:
            writer.write(raw)
            return await asyncio.wait_for(read_response(reader), timeout)
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while (size := int((await reader.readline()).strip(), 16)) > 0:
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    return int(status_line.split()[1]), headers, body


async def closed_after(reader: asyncio.StreamReader, within: float) -> tuple[float, bytes]:
    """Read until the server closes; return (seconds it took, everything read)."""
    start = time.monotonic()
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), within):
            data += chunk
    return time.monotonic() - start, data


async def keep_serving(served: Served, until: asyncio.Event) -> int:
    """Normal requests on fresh connections, one after another, until ``until`` is set; how many got 200."""
    ok = 0
    while not until.is_set():
        status, _, _ = await served.request(timeout=2.0)
        assert status == 200
        ok += 1
        await asyncio.sleep(0.05)
    return ok


async def slow_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    deadline = time.monotonic() + STREAM_S
    while time.monotonic() < deadline:
        await response.write(b": ping\n\n")
        await asyncio.sleep(0.25)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.fixture
async def start_served(tiny_model_dir) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """start_served(**dotted_overrides) -> Served; one-second limits unless overridden."""
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(**overrides: object) -> Served:
        port = free_port()
        values: dict[str, object] = {
            "model.source": str(tiny_model_dir), "model.dtype": "float32", "plugins.enabled": [],
            "server.head_timeout_s": LIMIT_S, "server.body_timeout_s": LIMIT_S,
            "server.keepalive_timeout_s": LIMIT_S, "server.shutdown_grace_s": 0.0,
        }
        values.update(overrides)
        app = create_app(load_settings(None, env={}, overrides=values))
        app.router.add_get("/slow-stream", slow_stream)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(app, "127.0.0.1", port, grace_s=0.0, stop=stop))
        stops.append((stop, task))
        served = Served(port)
        for _ in range(200):
            with contextlib.suppress(OSError):
                await served.request(timeout=1.0)
                return served
            await asyncio.sleep(0.05)
        raise AssertionError("the gateway did not start listening")

    yield start
    for stop, task in stops:
        stop.set()
        await asyncio.wait_for(task, 30)


# --- time limits ----------------------------------------------------------------------------------


async def test_a_connection_that_sends_nothing_is_closed_within_head_timeout(start_served):
    served = await start_served()
    reader, writer = await served.connect()
    took, data = await closed_after(reader, LIMIT_S + SLACK_S)
    writer.close()
    assert LIMIT_S - 0.2 <= took <= LIMIT_S + SLACK_S
    assert data == b""  # nothing was asked, so nothing is answered


async def drip_until_closed(served: Served, writer: asyncio.StreamWriter, reader: asyncio.StreamReader,
                            drops: list[bytes]) -> tuple[float, bytes, int]:
    """Send ``drops`` 0.1 s apart until the server closes, with normal requests going on beside.

    Returns how long it took, what the server sent, and how many normal requests got 200 meanwhile.
    """
    done = asyncio.Event()
    others = asyncio.create_task(keep_serving(served, done))

    async def drip() -> None:
        for drop in drops:
            writer.write(drop)
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    took, data = await closed_after(reader, LIMIT_S + SLACK_S)
    done.set()
    dripping.cancel()
    writer.close()
    return took, data, await others


def error_code(data: bytes) -> str:
    return str(json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"])


async def test_a_slow_header_client_gets_408_while_others_are_served(start_served):
    served = await start_served()
    reader, writer = await served.connect()
    head = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 100
    took, data, served_meanwhile = await drip_until_closed(served, writer, reader, [bytes([b]) for b in head])
    assert took <= LIMIT_S + SLACK_S
    assert data.startswith(b"HTTP/1.1 408") and error_code(data) == "request_timeout"
    assert served_meanwhile >= 3


async def test_a_slow_body_client_gets_408_while_others_are_served(start_served):
    served = await start_served()
    reader, writer = await served.connect()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n{")
    took, data, served_meanwhile = await drip_until_closed(served, writer, reader, [b" "] * 100)
    assert took <= LIMIT_S + SLACK_S
    assert data.startswith(b"HTTP/1.1 408") and error_code(data) == "request_timeout"
    assert served_meanwhile >= 3


async def test_an_idle_kept_alive_connection_is_closed_within_keepalive_timeout(start_served):
    served = await start_served(**{"server.head_timeout_s": 5.0})
    reader, writer = await served.connect()
    writer.write(HEAD)
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers.get("connection", "").lower() != "close"
    took, data = await closed_after(reader, LIMIT_S + SLACK_S)
    writer.close()
    assert LIMIT_S - 0.2 <= took <= LIMIT_S + SLACK_S and data == b""


async def test_a_kept_alive_connection_gets_a_fresh_head_timeout_for_its_next_request(start_served):
    # keep-alive 1 s, head 3 s: a request that starts at 0.5 s idle may take 2 s to send its head.
    served = await start_served(**{"server.head_timeout_s": 3.0})
    reader, writer = await served.connect()
    writer.write(HEAD)
    await read_response(reader)
    await asyncio.sleep(0.5)
    for part in (b"GET /health HTTP/1.1\r\n", b"Host: test\r\n", b"\r\n"):
        writer.write(part)
        await asyncio.sleep(0.7)
    status, _, _ = await asyncio.wait_for(read_response(reader), 2)
    writer.close()
    assert status == 200


async def test_a_response_streaming_longer_than_every_limit_is_not_cut(start_served):
    served = await start_served()
    reader, writer = await served.connect()
    start = time.monotonic()
    writer.write(b"GET /slow-stream HTTP/1.1\r\nHost: test\r\n\r\n")
    status, _, body = await asyncio.wait_for(read_response(reader), STREAM_S + 5)
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert time.monotonic() - start >= STREAM_S
    writer.write(HEAD)  # and the connection is still good for the next request
    status, _, _ = await asyncio.wait_for(read_response(reader), 2)
    writer.close()
    assert status == 200


# --- connection cap -------------------------------------------------------------------------------


async def test_at_the_cap_the_longest_waiting_connection_makes_room(start_served):
    served = await start_served(**{"server.max_connections": 4, "server.head_timeout_s": 30.0,
                                  "server.keepalive_timeout_s": 30.0})
    silent = [await served.connect() for _ in range(4)]
    await asyncio.sleep(0.2)
    newcomers = []
    for _ in range(3):  # each newcomer (kept open) pushes out the oldest silent connection
        reader, writer = await served.connect()
        writer.write(HEAD)
        status, _, _ = await asyncio.wait_for(read_response(reader), 2)
        assert status == 200
        newcomers.append((reader, writer))

    async def is_closed(reader: asyncio.StreamReader) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            return await asyncio.wait_for(reader.read(1), 0.3) == b""
        return False

    assert [await is_closed(reader) for reader, _ in silent] == [True, True, True, False]
    assert not any([await is_closed(reader) for reader, _ in newcomers])
    for _, writer in silent + newcomers:
        writer.close()


async def test_at_the_cap_with_every_connection_busy_newcomers_get_503_and_streams_go_on(start_served):
    served = await start_served(**{"server.max_connections": 3})
    streams = []
    for _ in range(3):
        reader, writer = await served.connect()
        writer.write(b"GET /slow-stream HTTP/1.1\r\nHost: test\r\n\r\n")
        streams.append((reader, writer))
    await asyncio.sleep(0.3)
    start = time.monotonic()
    status, headers, body = await served.request(timeout=2.0)
    assert status == 503 and time.monotonic() - start < 1.0
    assert headers["content-type"] == "application/json" and "retry-after" in headers
    assert json.loads(body)["error"]["code"] == "overloaded"
    for reader, writer in streams:
        status, _, body = await asyncio.wait_for(read_response(reader), STREAM_S + 5)
        assert status == 200 and body.endswith(b"data: [DONE]\n\n")
        writer.close()
    await asyncio.sleep(0.2)
    status, _, _ = await served.request()  # the streams are over: room again
    assert status == 200
