"""OpenAI-style API errors: one exception type, its constructors, and its HTTP rendering.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with all four
keys present, because the openai SDK reads ``body["error"]`` and takes ``type``/``param``/``code``
from it. ``code`` is always a string or null (never an int, unlike vLLM/llama.cpp). Messages and
params may quote the request, so lone surrogates in them are escaped: any input renders.
"""

from __future__ import annotations

import json
import math
from typing import Any, get_args

import pydantic
from aiohttp import web
from pydantic_core.core_schema import ErrorType

from nanochat_gateway.api.schemas import ErrorBody, ErrorResponse
from nanochat_gateway.redact import printable

__all__ = [
    "APIError",
    "authentication_error",
    "error_response",
    "internal_error",
    "invalid_request",
    "not_found",
    "overloaded",
    "payload_too_large",
    "rate_limited",
    "timeout",
    "unavailable",
    "validation_error_to_api_error",
]


class APIError(Exception):
    """An error that maps to one HTTP status and one OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        # A message may quote client input; a lone surrogate in it could not be encoded as UTF-8.
        message = printable(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = None if param is None else printable(param)
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """Return the OpenAI error envelope; all four inner keys are always present."""
        body = ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=body).model_dump()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def __repr__(self) -> str:
        return f"APIError(status={self.status}, type={self.type!r}, param={self.param!r}, code={self.code!r}, message={self.message!r})"


# --- constructors -------------------------------------------------------------------------------


def _retry_headers(retry_after_s: float | None) -> dict[str, str]:
    if retry_after_s is None:
        return {}
    seconds = max(0.0, float(retry_after_s))
    # Retry-After is whole seconds (RFC 9110); the openai SDK reads retry-after-ms first for finer backoff.
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, round(seconds * 1000))),
    }


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: malformed request or bad parameter; ``param`` names the offending field."""
    return APIError(400, message, "invalid_request_error", param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """404: unknown model or route (OpenAI uses ``invalid_request_error`` with e.g. ``model_not_found``)."""
    return APIError(404, message, "invalid_request_error", param, code)


def authentication_error(message: str, code: str | None = "invalid_api_key") -> APIError:
    """401: missing or wrong API key (OpenAI's own type for this is ``invalid_request_error``)."""
    # RFC 6750 asks a 401 for a bearer-token resource to say which scheme it wants.
    return APIError(401, message, "invalid_request_error", None, code, {"WWW-Authenticate": "Bearer"})


def rate_limited(message: str, retry_after_s: float | None) -> APIError:
    """429: a per-key or global rate limit was hit; the SDK retries it, honouring Retry-After up to 60 s."""
    return APIError(
        429, message, "rate_limit_error", None, "rate_limit_exceeded", _retry_headers(retry_after_s)
    )


def overloaded(message: str, retry_after_s: float | None) -> APIError:
    """503: the admission queue is full; tells clients (and load balancers) when to come back."""
    return APIError(
        503, message, "service_unavailable_error", None, "overloaded", _retry_headers(retry_after_s)
    )


def timeout(message: str) -> APIError:
    """504: the request waited or ran longer than the server allows."""
    return APIError(504, message, "timeout_error", None, "timeout")


def payload_too_large(max_bytes: int) -> APIError:
    """413: the request body exceeds the configured size limit."""
    return APIError(
        413,
        f"Request body is too large: the limit is {max_bytes} bytes.",
        "invalid_request_error",
        None,
        "payload_too_large",
    )


def internal_error(message: str = "The server had an error while processing your request.") -> APIError:
    """500: an unexpected failure; the message should not leak internals."""
    return APIError(500, message, "server_error", None, None)


def unavailable(
    message: str, code: str | None = "unavailable", retry_after_s: float | None = None
) -> APIError:
    """503: the server is not ready (model loading) or is shutting down."""
    return APIError(503, message, "service_unavailable_error", None, code, _retry_headers(retry_after_s))


# --- rendering ----------------------------------------------------------------------------------


def error_response(err: APIError, request_id: str | None = None) -> web.Response:
    """Render ``err`` as a JSON response with its status and headers (plus ``x-request-id`` if given)."""
    headers = dict(err.headers)
    if request_id is not None:
        headers["x-request-id"] = request_id
    # Content-Type must end in "json" or the SDK will not parse the body as an error object.
    return web.Response(
        text=err.to_json(),
        status=err.status,
        content_type="application/json",
        headers=headers,
    )


# --- pydantic validation errors -----------------------------------------------------------------

# Loc entries that are union-branch labels rather than field names, e.g. "str" or "list[ContentPart]".
_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "bytes", "none", "dict", "list", "tuple"})
# Pydantic error types that mean "wrong JSON type" rather than "bad value".
_TYPE_ERROR_SUFFIXES = ("_type", "_parsing")
_MAX_SHOWN_INPUT = 60
_PYDANTIC_ERROR_TYPES = frozenset(get_args(ErrorType))


def _is_branch_label(part: int | str) -> bool:
    if isinstance(part, int):
        return False
    # Request fields and aliases are snake_case; labels are type names, class names or contain brackets.
    return part in _TYPE_LABELS or part[:1].isupper() or any(c in part for c in "[]()-, ")


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    return tuple(p for p in loc if not _is_branch_label(p))


def _union_prefix(loc: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    for i, part in enumerate(loc):
        if _is_branch_label(part):
            return loc[:i]
    return None


def _is_type_error(error: Any) -> bool:
    return str(error["type"]).endswith(_TYPE_ERROR_SUFFIXES)


def _pick_error(errors: list[Any]) -> tuple[Any, str | None]:
    """Pick the error to report: the first one, but inside a union the most telling branch.

    Within a union the branch that got deepest wins, then a bad value beats a wrong type (so
    ``stop: ""`` reports the empty string, not "should be a list"). When every branch merely had
    the wrong type, a merged "Input should be A or B" message is returned as well.
    """
    first = errors[0]
    prefix = _union_prefix(tuple(first["loc"]))
    if prefix is None:
        return first, None
    siblings = [e for e in errors if tuple(e["loc"])[: len(prefix)] == prefix]
    # sorted() is stable, so the first-reported branch wins ties.
    best = sorted(siblings, key=lambda e: (-len(_clean_loc(tuple(e["loc"]))), _is_type_error(e)))[0]
    if len(_clean_loc(tuple(best["loc"]))) > len(prefix) or not _is_type_error(best):
        return best, None
    wants: list[str] = []
    for e in siblings:
        want = e["msg"].removeprefix("Input should be ")
        if want not in wants:
            wants.append(want)
    return best, "Input should be " + " or ".join(wants)


def _show_input(value: Any) -> str | None:
    if not isinstance(value, str | int | float | bool) and value is not None:
        return None
    shown = json.dumps(value, ensure_ascii=False)
    if len(shown) > _MAX_SHOWN_INPUT:
        shown = shown[: _MAX_SHOWN_INPUT - 3] + "..."
    return shown


def _quotes_input(error: Any) -> bool:
    # Our own (non-pydantic) messages may already quote the value; saying it twice reads badly.
    if error["type"] in _PYDANTIC_ERROR_TYPES:
        return False
    return error.get("input") in (error.get("ctx") or {}).values()


def _code_for(error_type: str) -> str:
    if error_type == "missing":
        return "missing_required_parameter"
    if error_type.endswith(_TYPE_ERROR_SUFFIXES):
        return "invalid_type"
    if error_type.startswith("unsupported_"):
        return error_type
    return "invalid_value"


def validation_error_to_api_error(exc: pydantic.ValidationError) -> APIError:
    """Turn a pydantic error on a request body into a 400 naming the field as a dotted path.

    Only the first problem is reported (as OpenAI does). Union-branch labels are dropped from the
    path, so a bad content part is reported as ``messages.0.content.1.type``. Messages look like
    ``"temperature: Input should be less than or equal to 2 (got 3)"``.
    """
    errors = exc.errors(include_url=False)
    if not errors:
        return invalid_request("The request body is invalid.")
    error, merged_msg = _pick_error(errors)
    loc = _clean_loc(tuple(error["loc"]))
    param = ".".join(str(p) for p in loc) or None
    error_type = error["type"]
    if param is None:
        # A root-level failure means the body was JSON but not an object.
        return invalid_request("The request body must be a JSON object.", None, "invalid_type")
    if error_type == "missing":
        return invalid_request(f"Missing required parameter: '{param}'.", param, _code_for(error_type))
    message = f"{param}: {merged_msg or error['msg']}"
    shown = _show_input(error.get("input"))
    if shown is not None and not _quotes_input(error):
        message += f" (got {shown})"
    return invalid_request(message, param, _code_for(error_type))
