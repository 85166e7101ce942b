"""HTTP connections: time limits, a cap on how many are open, and parser errors in OpenAI's shape.

aiohttp bounds neither the time to send a request head or body nor the number of connections,
and keeps an idle connection for an hour. ``GatewayRunner`` serves an app like
``web.AppRunner``, but every connection is a ``GatewayConnection``, which is in one phase at a
time, each with its own deadline:

- ``head``: waiting for a complete request head, at most ``head_timeout_s`` from connecting (or
  from the first byte of a later request); a client that sent part of a head gets a 408;
- ``body``: the head is in, the body is arriving; at most ``body_timeout_s``, then a 408;
- ``busy``: a handler is answering. No deadline: a long SSE stream is never cut here (the
  handler's own ``request_timeout_s`` bounds it);
- ``idle``: answered, kept alive, nothing sent yet; closed after ``keepalive_timeout_s``.

At ``max_connections`` open, the connection that has waited longest for a request head is closed
to make room; when every connection is busy, the newcomer gets a 503 and is closed at once.
A 408 or 503 is written straight to the socket and the write side shut down; the connection
closes when the client closes its side, or after ``LINGER_S``, so the answer is not lost to a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import http_exceptions, web, web_protocol, web_server
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader

from nanochat_gateway.api import errors
from nanochat_gateway.api.protocol_errors import HeaderLimits, parser_error_to_api
from nanochat_gateway.config import ServerSettings
from nanochat_gateway.resources import MAX_LINGERING, ThrottledLog, accept_backlog, default_max_connections

__all__ = ["ConnectionLimits", "GatewayConnection", "GatewayRunner", "GatewayServer"]

log = logging.getLogger("nanochat_gateway")

LINGER_S = 1.0  # how long a refused or timed-out connection may keep its socket to read the client's rest
RECHECK_S = 0.5  # a deadline that finds the connection between states looks again this much later
# aiohttp's defaults, except that a request line gets two bytes more than a header: that is how an
# overlong line is told apart (414 or 431) when the parser reports it.
HEADER_LIMITS = HeaderLimits(max_line_size=8192, max_field_size=8190, max_headers=128)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The [server] settings a connection obeys, with ``max_connections`` and the backlog resolved."""

    head_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    max_connections: int
    listen_backlog: int
    retry_after_s: int

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ConnectionLimits:
        backlog = server.listen_backlog or accept_backlog()
        return cls(head_timeout_s=server.head_timeout_s, body_timeout_s=server.body_timeout_s,
                   keepalive_timeout_s=server.keepalive_timeout_s,
                   max_connections=server.max_connections or default_max_connections(backlog=backlog),
                   listen_backlog=backlog, retry_after_s=server.retry_after_s)


def raw_error_response(err: errors.APIError) -> bytes:
    """An HTTP/1.1 response for ``err`` as bytes, for connections whose handler cannot answer."""
    body = json.dumps(err.to_dict()).encode()
    lines = [f"HTTP/1.1 {err.status} {HTTPStatus(err.status).phrase}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in err.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class GatewayServer(web_server.Server):
    """aiohttp's low-level server, making GatewayConnections and keeping the connection cap."""

    def __init__(self, handler: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.open: dict[GatewayConnection, None] = {}  # insertion-ordered set of open connections
        self.lingering = 0  # refused connections still holding their socket
        self._evictions = ThrottledLog(log)
        self._refusals = ThrottledLog(log)

    def __call__(self) -> GatewayConnection:
        return GatewayConnection(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: web_protocol.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if isinstance(handler, GatewayConnection):
            self.open[handler] = None

    def connection_lost(self, handler: web_protocol.RequestHandler, exc: BaseException | None = None) -> None:
        if isinstance(handler, GatewayConnection):
            self.open.pop(handler, None)
        super().connection_lost(handler, exc)

    def admit(self) -> bool:
        """Whether one more connection may open, closing the longest-waiting idle one if that makes room."""
        if len(self.open) < self.limits.max_connections:
            return True
        waiting = [c for c in self.open if c.is_waiting_for_head()]
        if waiting:
            victim = min(waiting, key=lambda c: c.phase_since)
            self.open.pop(victim, None)
            victim.force_close()
            self._evictions.event(logging.WARNING, "max_connections=%d reached: closed the connection that "
                                  "waited longest for a request head", self.limits.max_connections)
            return True
        self._refusals.event(logging.WARNING, "max_connections=%d reached and every connection is busy: "
                             "refused a new connection with 503", self.limits.max_connections)
        return False


class GatewayConnection(web_protocol.RequestHandler):
    """One client connection: aiohttp's HTTP/1.1 protocol plus phase deadlines and JSON parser errors."""

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        # aiohttp's own keep-alive timer stays as a backstop behind the phase deadlines.
        limits = manager.limits
        kwargs["keepalive_timeout"] = limits.head_timeout_s + limits.keepalive_timeout_s
        kwargs.update(max_line_size=HEADER_LIMITS.max_line_size, max_field_size=HEADER_LIMITS.max_field_size,
                      max_headers=HEADER_LIMITS.max_headers)
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._server = manager
        self.phase = "head"
        self.phase_since = self._loop.time()
        self._deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        self._partial_head = False  # some bytes of the next head have arrived
        self._closing = False  # an answer was written and the write side shut: discard input
        self._refused = False  # over the cap: never served

    # --- phases -------------------------------------------------------------------------------

    def is_waiting_for_head(self) -> bool:
        """Idle, or reading a head, with no request queued or running: safe to close.

        True from the moment of connecting, before aiohttp's request task has even started: in a
        burst of arrivals the cap must be able to make room among connections accepted together.
        """
        return self.phase in ("head", "idle") and not self._closing

    def _awaiting_message(self) -> bool:
        # aiohttp's request loop is parked until a head arrives (not, say, reading an unread body).
        return self._waiter is not None and not self._waiter.done()

    def _enter(self, phase: str, timeout_s: float | None) -> None:
        self.phase, self.phase_since = phase, self._loop.time()
        self._set_deadline(timeout_s)

    def _set_deadline(self, timeout_s: float | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None if timeout_s is None else self._loop.call_later(timeout_s, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport is None:
            return
        if self._closing:
            self.force_close()
        elif self.phase == "body":
            self._on_body_deadline()
        elif self.phase in ("head", "idle"):
            if not self._awaiting_message():  # still reading an unread body after a response, say
                self._set_deadline(RECHECK_S)
                return
            if self.phase == "head" and self._partial_head:
                self._answer_and_close(errors.APIError(
                    408, f"The request head did not arrive within {self._limits.head_timeout_s:g} seconds.",
                    "invalid_request_error", None, "request_timeout"))
            else:
                self.force_close()

    def _on_body_deadline(self) -> None:
        body = self._body
        if body is None or body.is_eof() or body.exception() is not None:
            self._enter("busy", None)
            return
        current = self._current_request
        if current is not None and current.content is body and current.writer.output_size == 0:
            self._answer_and_close(errors.APIError(
                408, f"The request body did not arrive within {self._limits.body_timeout_s:g} seconds.",
                "invalid_request_error", None, "request_timeout"))
        else:  # an answer has begun (or belongs to another request): nothing more can be said
            self.force_close()

    def _answer_and_close(self, err: errors.APIError) -> None:
        """Write ``err`` as a whole response, shut the write side, close when the client does (or soon)."""
        assert self.transport is not None
        self._closing = True
        self.transport.write(raw_error_response(err))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._set_deadline(LINGER_S)

    # --- asyncio protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._server.admit():
            # Not registered with the server and no request task: only the 503, then close.
            self.transport = transport  # type: ignore[assignment]
            self._refused = True
            err = errors.overloaded("The server has too many open connections. Retry later.",
                                    self._limits.retry_after_s)
            if self._server.lingering < MAX_LINGERING:
                self._server.lingering += 1
                self._answer_and_close(err)
            else:  # a flood: descriptors matter more than a clean goodbye
                transport.write(raw_error_response(err))  # type: ignore[attr-defined]
                self.force_close()
            return
        super().connection_made(transport)
        self._enter("head", self._limits.head_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        heads_before = self._request_count
        super().data_received(data)
        if self.transport is None:
            return
        if self._request_count != heads_before:
            self._on_new_heads()
        elif data and self.phase in ("head", "idle"):
            if self.phase == "idle":
                self._enter("head", self._limits.head_timeout_s)
            self._partial_head = True
        if self.phase == "body" and self._body is not None and self._body.is_eof():
            self._enter("busy", None)

    def _on_new_heads(self) -> None:
        self._partial_head = False
        if self.phase == "body" and self._body is not None and not self._body.is_eof():
            self._fail_body_in_progress()
        message, payload = self._messages[-1] if self._messages else (None, None)
        if isinstance(message, RawRequestMessage) and isinstance(payload, StreamReader) and not payload.is_eof():
            self._body = payload
            self._enter("body", self._limits.body_timeout_s)
        else:
            self._body = None
            self._enter("busy", None)

    def _fail_body_in_progress(self) -> None:
        """The parser failed inside a body (bad chunked encoding): the reading handler gets the error.

        aiohttp would queue the error as a second response and leave the handler waiting for the
        rest of the body; instead the handler's read fails at once, its answer is the only one, and
        the connection closes after it (the parser cannot resume mid-body).
        """
        assert self._body is not None
        for item in list(self._messages):
            if isinstance(item[0], web_protocol._ErrInfo):
                self._messages.remove(item)
                cause = item[0].exc
                error = web_protocol.RequestPayloadError("the request body is not valid")
                error.__cause__ = cause
                self._body.set_exception(error, cause)
                self.close()
                return

    def connection_lost(self, exc: BaseException | None) -> None:
        self._set_deadline(None)
        if self._refused and self._closing:
            self._server.lingering -= 1
        super().connection_lost(exc)

    # --- aiohttp hooks --------------------------------------------------------------------------

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if self.phase == "busy" and not self._messages:
            self._enter("idle", self._limits.keepalive_timeout_s)
        return result

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # aiohttp reads what a handler left of a body after answering; a body that fails then is
        # the client's fault, not worth a traceback (and the traceback would quote the request).
        exc = kwargs.get("exc_info")
        if isinstance(exc, web_protocol.RequestPayloadError | http_exceptions.HttpProcessingError):
            log.info("closed a connection whose request body was not valid HTTP")
            return
        super().log_exception(*args, **kwargs)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """An OpenAI-shaped answer for a request the app never saw (or a handler that failed outright)."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status == 500:
            log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
            err = errors.internal_error()
        elif status == 504:
            err = errors.timeout("The request handler timed out.")
        else:
            err = parser_error_to_api(exc, HEADER_LIMITS)
            # One line, no traceback and nothing the client sent: a header may hold a key.
            log.info("refused a malformed request from %s: %d %s", request.remote, err.status, err.message)
        response = errors.error_response(err)
        response.force_close()
        return response


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections obey ``limits`` (see the module docstring)."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web_server.Server:
        plain = await super()._make_server()  # runs the app's start-up and freezes it
        # The same handler, request factory and options (debug, access log) aiohttp chose for the app.
        return GatewayServer(plain.request_handler, limits=self.limits, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation, loop=asyncio.get_running_loop(),
                             **plain._kwargs)

    @property
    def open_connections(self) -> int:
        server = self.server
        return len(server.open) if isinstance(server, GatewayServer) else 0
