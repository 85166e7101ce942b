"""The outermost middleware: a request id on every response and OpenAI-shaped errors.

Whatever goes wrong below it (a route that does not exist, a body over the size limit,
an APIError from a handler or plugin, an unexpected exception) leaves as JSON in
OpenAI's error envelope with the right status, never as a traceback or an HTML page.
"""

from __future__ import annotations

import logging
import re
import uuid

from aiohttp import web, web_protocol

from nanochat_gateway.api import errors, protocol_errors
from nanochat_gateway.api.generation import ClientGone
from nanochat_gateway.plugins import REQUEST_ID, Handler

log = logging.getLogger(__name__)

_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def _http_exception_to_api(exc: web.HTTPException, request: web.Request) -> errors.APIError:
    status = exc.status
    if status == 404:
        return errors.not_found(f"Unknown path {request.path!r}", code="unknown_url")
    if status == 405:
        err = errors.APIError(405, f"Method {request.method} is not allowed on {request.path!r}",
                              "invalid_request_error", None, "method_not_allowed")
        if allow := exc.headers.get("Allow"):
            err.headers["Allow"] = allow
        return err
    if status == 413:
        return errors.payload_too_large(request.app._client_max_size)
    if status < 500:
        return errors.APIError(status, exc.reason or "Bad request", "invalid_request_error", None, None)
    return errors.internal_error()


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A client-supplied id is kept when it is sane, so traces can span the caller and us.
    supplied = request.headers.get("x-request-id", "")
    request_id = supplied if _CLIENT_ID_RE.match(supplied) else new_request_id()
    request[REQUEST_ID] = request_id
    try:
        response: web.StreamResponse = await handler(request)
    except errors.APIError as exc:
        response = errors.error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like pass through
            exc.headers["x-request-id"] = request_id
            raise
        response = errors.error_response(_http_exception_to_api(exc, request))
    except web_protocol.RequestPayloadError as exc:
        # The body broke while being read (bad chunking, a gzip body that is not gzip): say so, then close.
        response = errors.error_response(protocol_errors.body_error_to_api(exc))
        response.force_close()
    except (ClientGone, ConnectionResetError):
        # Nobody is left to read an answer; 499 ("client closed request") shows in access logs.
        response = web.Response(status=499)
    except Exception:
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path, request_id)
        response = errors.error_response(errors.internal_error())
    if not response.prepared:
        response.headers["x-request-id"] = request_id
    return response
