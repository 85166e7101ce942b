"""request_log: one structured log line per request.

The line goes to the logger ``nanochat_gateway.request`` at INFO, with its fields passed
through ``extra=`` so the json and keyvalue formats of [logging] show each as a field:

    request_id, method, path, status, latency_ms, key_name (the API key's *name*, set by
    api_keys), client, user_agent; and for generations: endpoint, model, stream, n,
    prompt_tokens, completion_tokens, finish_reasons, generation_status (499 when the
    client left, an error status when a stream ended in an error event), error,
    ttft_ms, queue_ms.

Prompts, completions, keys and headers other than User-Agent are never logged. With
``log_prompts = true`` the rendered prompt text (the decoded prompt tokens) is added as
``prompt``, cut to ``max_logged_chars``. The query string is left out of ``path`` because
clients sometimes put secrets there.

Put ``request_log`` first in ``[plugins] enabled`` so requests that other plugins reject
(401, 429) are logged too.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nanochat_gateway.plugins import (
    API_KEY_NAME,
    CLIENT_ADDRESS,
    GENERATION,
    REQUEST_ID,
    GenerationContext,
    Handler,
    Plugin,
    handle_and_record,
)

log = logging.getLogger("nanochat_gateway.request")


class RequestLogSettings(BaseModel):
    """``[plugins.request_log]``."""

    model_config = ConfigDict(extra="forbid")

    skip_paths: list[str] = Field(
        default_factory=lambda: ["/health", "/ready", "/metrics"],
        description="Exact paths that are not logged (probes and scrapes).",
    )
    log_prompts: bool = Field(False, description="Add the rendered prompt text to each generation's line.")
    max_logged_chars: int = Field(2000, ge=0, description="Longest prompt text logged with log_prompts.")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class RequestLog(Plugin):
    """Logs one line per request with what happened, never what was said."""

    name = "request_log"
    Settings = RequestLogSettings
    settings: RequestLogSettings

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in self.settings.skip_paths or not log.isEnabledFor(logging.INFO):
            return await handler(request)
        return await handle_and_record(request, handler, self._log)

    def _log(self, request: web.Request, status: int, seconds: float) -> None:
        fields: dict[str, Any] = {
            "request_id": request.get(REQUEST_ID),
            "method": request.method,
            "path": request.path,
            "status": status,
            "latency_ms": _ms(seconds),
            "key_name": request.get(API_KEY_NAME),
            "client": request.get(CLIENT_ADDRESS) or request.remote,
            "user_agent": (request.headers.get("User-Agent") or "")[:256] or None,
        }
        ctx = request.get(GENERATION)
        if ctx is not None:
            fields.update(self._generation_fields(ctx))
        log.info("%s %s %s %.1fms", request.method, request.path, status, seconds * 1000, extra=fields)

    def _generation_fields(self, ctx: GenerationContext) -> dict[str, Any]:
        result = ctx.result
        fields: dict[str, Any] = {
            "endpoint": ctx.endpoint,
            "model": ctx.model,
            "stream": ctx.stream,
            "n": ctx.n,
            "key_name": ctx.key_name or ctx.request.get(API_KEY_NAME),
            # A request refused before it was queued (plugin, overload) has no result.
            "prompt_tokens": result.prompt_tokens if result else ctx.prompt_tokens,
            "completion_tokens": result.completion_tokens if result else 0,
            "finish_reasons": result.finish_reasons if result else None,
            "generation_status": result.status if result else None,
            "error": result.error if result else None,
            "ttft_ms": _ms(result.time_to_first_token) if result else None,
            "queue_ms": _ms(result.queue_seconds) if result else None,
        }
        if self.settings.log_prompts:
            fields["prompt"] = self._prompt_text(ctx)
        return fields

    def _prompt_text(self, ctx: GenerationContext) -> str | None:
        router = self.context.router
        loaded = next((e.loaded for e in router.executors if e.loaded is not None), None) if router else None
        if loaded is None:
            return None
        limit = self.settings.max_logged_chars
        text = loaded.tokenizer.decode(ctx.prompt_ids)  # bounded by the context length: cheap enough
        return text if len(text) <= limit else text[:limit] + "…"
