"""Operational endpoints: liveness, readiness, stats and the OpenAPI document."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from nanochat_gateway import __version__
from nanochat_gateway.api.openapi import ServerLimits, build_openapi
from nanochat_gateway.api.prepare import largest_n
from nanochat_gateway.config import Settings, describe_settings
from nanochat_gateway.state import STATE, GatewayState


def _state(request: web.Request) -> GatewayState:
    return request.app[STATE]


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 only once every executor has its model (and not while draining)."""
    state = _state(request)
    is_ready, reason = state.readiness()
    body = {"status": "ready" if is_ready else "unavailable", "reason": reason, "model": state.model_id}
    headers = {} if is_ready else {"Retry-After": str(state.settings.server.retry_after_s)}
    return web.json_response(body, status=200 if is_ready else 503, headers=headers)


async def stats(request: web.Request) -> web.Response:
    state = _state(request)
    model = state.model
    router = state.router
    body = {
        "version": __version__,
        "uptime_s": round(time.time() - state.started_at, 3),
        "phase": state.phase,
        "draining": state.draining,
        "model_id": state.model_id,
        "model": model.describe() if model else None,
        "executors": [e.describe() for e in router.executors] if router else [],
        "running": router.running if router else 0,
        "waiting": router.waiting if router else 0,
        "plugins": [p.name for p in state.plugins],
        "settings": describe_settings(state.settings),
    }
    return web.json_response(body)


async def openapi(request: web.Request) -> web.Response:
    state = _state(request)
    served = {resource.canonical for resource in request.app.router.resources()}
    plugin_paths: dict[str, Any] = {}
    for plugin in state.plugins:
        plugin_paths.update(plugin.openapi_paths())
    return web.json_response(build_openapi(state.model_id, served_paths=served, limits=server_limits(state.settings),
                                           plugin_paths=plugin_paths))


def server_limits(settings: Settings) -> ServerLimits:
    """The bounds prepare_run enforces, for the OpenAPI document."""
    limits = settings.limits
    return ServerLimits(
        max_n=largest_n(settings), max_tokens=limits.max_tokens_limit,
        max_top_logprobs=limits.max_top_logprobs, max_stop_sequences=limits.max_stop_sequences,
        max_prompts=limits.max_prompts, max_messages=limits.max_messages,
    )
