"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from aiohttp import web

from nanochat_gateway.api import errors
from nanochat_gateway.api.bodies import json_response
from nanochat_gateway.api.schemas import Model, ModelList
from nanochat_gateway.state import STATE, GatewayState

OWNER = "nanochat-gateway"


def _model_object(state: GatewayState, model_id: str) -> Model:
    loaded = state.model
    demo = (state.resolved is not None and state.resolved.is_demo) or (loaded is not None and loaded.is_demo)
    return Model(
        id=model_id, created=int(state.started_at), owned_by=OWNER, demo=demo,
        description="DEMO MODEL with random weights: output is gibberish" if demo else None,
        generation=loaded.architecture if loaded is not None else None,
        quantization=loaded.quantize if loaded is not None else None,
        max_model_len=state.router.executors[0].max_seq_len if loaded is not None and state.router else None,
    )


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = [_model_object(state, state.model_id)] if state.model_id else []
    return json_response(ModelList(data=data))


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    wanted = request.match_info["model"]
    if not state.model_id or wanted != state.model_id:
        raise errors.not_found(f"The model '{wanted}' does not exist", param="model", code="model_not_found")
    return json_response(_model_object(state, state.model_id))
