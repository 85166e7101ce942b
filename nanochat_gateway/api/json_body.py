"""A request body read as JSON within bounds a hostile client cannot get past.

- ``Content-Encoding`` must be absent, ``identity``, ``gzip`` or ``deflate`` (what aiohttp
  decodes by itself); anything else, a list of encodings included, gets 415.
- Arrays and objects may nest at most ``[limits] max_json_depth`` deep: deeper documents get
  400 whether Python's parser could read them (it gives up near 1,000 levels) or not.
- A number with more digits than Python converts to int (4,300) gets 400.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from nanochat_gateway.api import errors
from nanochat_gateway.api.protocol_errors import unsupported_content_encoding
from nanochat_gateway.state import STATE

__all__ = ["ACCEPTED_CONTENT_ENCODINGS", "json_depth", "read_json"]

ACCEPTED_CONTENT_ENCODINGS = frozenset({"identity", "gzip", "deflate"})


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON; APIError 415 or 400 when it cannot or may not be."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ACCEPTED_CONTENT_ENCODINGS:
        raise unsupported_content_encoding()
    max_depth = request.app[STATE].settings.limits.max_json_depth
    try:
        data = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.invalid_request(f"The request body is not valid JSON ({exc})", code="invalid_json") from None
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise errors.invalid_request("The request body holds a number with too many digits.",
                                     code="invalid_json") from None
    if json_depth(data) > max_depth:
        raise _too_deep(max_depth)
    return data


def json_depth(value: Any) -> int:
    """How deep arrays and objects nest in ``value`` (a scalar is 0, ``[]`` is 1); not recursive."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            pending.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return deepest


def _too_deep(max_depth: int) -> errors.APIError:
    return errors.invalid_request(f"The request body nests arrays and objects more than {max_depth} deep.",
                                  code="json_too_deep")
