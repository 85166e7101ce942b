"""Bodies on the wire: a JSON request read into its pydantic model, a response model written as JSON."""

from __future__ import annotations

import logging
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from nanochat_gateway.api import errors
from nanochat_gateway.api.json_body import read_json
from nanochat_gateway.api.schemas import RequestModel, dump

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=RequestModel)


async def read_body(request: web.Request, model: type[Body]) -> Body:
    """The validated body, or an APIError naming what is wrong with it (400; 415 for its encoding)."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise errors.invalid_request("The request body must be a JSON object", code="invalid_json")
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise errors.validation_error_to_api_error(exc) from None
    if unknown := body.unknown_fields():
        log.debug("ignoring unknown request fields: %s", ", ".join(unknown))
    return body


def json_response(model: BaseModel) -> web.Response:
    """A 200 response whose body is `model` serialised by pydantic-core."""
    return web.Response(text=dump(model), content_type="application/json")
