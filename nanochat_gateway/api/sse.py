"""Server-sent events in the shape the OpenAI SDK parses, over aiohttp-sse.

data-only events separated by a blank line, comments (": ping") as keep-alives while a
request waits, an error event in OpenAI's envelope if something fails after the headers
went out, and ``data: [DONE]`` last.
"""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from nanochat_gateway.api import errors


async def open_event_stream(request: web.Request, request_id: str, keepalive_s: float) -> EventSourceResponse:
    """Send the headers (200, text/event-stream, no-cache, X-Accel-Buffering: no)."""
    response = EventSourceResponse(
        headers={"x-request-id": request_id}, sep="\n", allow_all_methods=True, ping_interval=keepalive_s,
    )
    await response.prepare(request)
    return response


async def send_json(response: EventSourceResponse, payload: dict) -> None:
    await response.send(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


async def send_error(response: EventSourceResponse, err: errors.APIError) -> None:
    """A failure after the stream started: the SDK raises APIError on an event with "error"."""
    await send_json(response, err.to_dict())


async def send_done(response: EventSourceResponse) -> None:
    await response.send("[DONE]")
