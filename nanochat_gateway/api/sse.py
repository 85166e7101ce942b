"""Server-sent events in the shape the OpenAI SDK parses, over aiohttp-sse.

data-only events separated by a blank line, comments (": ping") as keep-alives while a
request waits, an error event in OpenAI's envelope if something fails after the headers
went out, and ``data: [DONE]`` last.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from nanochat_gateway.api import errors
from nanochat_gateway.api.generation import CLIENT_GONE_ERRORS, GenerationRun

log = logging.getLogger(__name__)


async def open_event_stream(request: web.Request, request_id: str, keepalive_s: float) -> EventSourceResponse:
    """Send the headers (200, text/event-stream, no-cache, X-Accel-Buffering: no)."""
    response = EventSourceResponse(
        headers={"x-request-id": request_id}, sep="\n", allow_all_methods=True, ping_interval=keepalive_s,
    )
    await response.prepare(request)
    return response


async def send_error(response: EventSourceResponse, err: errors.APIError) -> None:
    """A failure after the stream started: the SDK raises APIError on an event with "error"."""
    await response.send(err.to_json())


async def send_done(response: EventSourceResponse) -> None:
    await response.send("[DONE]")


async def stream_events(request: web.Request, run: GenerationRun, events: AsyncGenerator[str, None]) -> web.StreamResponse:
    """Send each event (a serialised chunk) as SSE data, then [DONE].

    Once the headers are out the status is 200 whatever happens, so a failure (an APIError or
    a bug) becomes an error event followed by [DONE]; a client that went away just ends it.
    """
    response: EventSourceResponse | None = None
    try:
        async with run.reporting():
            response = await open_event_stream(request, run.ctx.request_id, run.server.sse_keepalive_s)
            try:
                # aclosing: a write that fails mid-way must not leave the generator to the garbage collector.
                async with contextlib.aclosing(events):
                    async for event in events:
                        await response.send(event)
            except CLIENT_GONE_ERRORS:
                raise
            except Exception as exc:
                await _send_failure(run, response, exc)
                return response
            await send_done(response)
    except CLIENT_GONE_ERRORS:
        if response is None:
            raise  # nothing was sent: the middleware answers (499)
    finally:
        if response is not None:
            response.stop_streaming()
    assert response is not None  # every path that leaves it None has raised
    return response


async def _send_failure(run: GenerationRun, response: EventSourceResponse, exc: Exception) -> None:
    if isinstance(exc, errors.APIError):
        err = exc
    else:
        log.exception("stream of request %s failed", run.ctx.request_id)
        err = errors.internal_error()
    run.record(err.status, err.message)
    with contextlib.suppress(*CLIENT_GONE_ERRORS):  # nobody left to tell
        await send_error(response, err)
        await send_done(response)
