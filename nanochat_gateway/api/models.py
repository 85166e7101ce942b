"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from aiohttp import web

from nanochat_gateway.api import errors
from nanochat_gateway.api.schemas import Model, ModelList, dump
from nanochat_gateway.state import STATE, GatewayState

OWNER = "nanochat-gateway"


def _state(request: web.Request) -> GatewayState:
    return request.app[STATE]


def _model_object(state) -> dict:
    model = Model(id=state.model_id, created=int(state.started_at), owned_by=OWNER).model_dump()
    loaded = state.model
    demo = (state.resolved is not None and state.resolved.is_demo) or (loaded is not None and loaded.is_demo)
    # Extension fields: clients ignore them; people reading /v1/models learn what is served.
    model["demo"] = demo
    if demo:
        model["description"] = "DEMO MODEL with random weights: output is gibberish"
    if loaded is not None:
        model["generation"] = loaded.generation
        model["max_model_len"] = state.router.executors[0].max_seq_len if state.router else None
    return model


async def list_models(request: web.Request) -> web.Response:
    state = _state(request)
    data = [_model_object(state)] if state.model_id else []
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state = _state(request)
    wanted = request.match_info["model"]
    if not state.model_id or wanted != state.model_id:
        raise errors.not_found(f"The model '{wanted}' does not exist", param="model", code="model_not_found")
    return web.json_response(_model_object(state))


def check_model(state, requested: str) -> None:
    """A request naming a model other than the one served gets OpenAI's 404."""
    if requested != state.model_id:
        raise errors.not_found(
            f"The model '{requested}' does not exist; this server serves '{state.model_id}'",
            param="model", code="model_not_found",
        )


__all__ = ["ModelList", "check_model", "dump", "get_model", "list_models"]
