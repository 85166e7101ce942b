"""The gateway's own routes (plugins add theirs separately)."""

from __future__ import annotations

from aiohttp import web

from nanochat_gateway.api import chat, completions, health, models, tokenize


def add_routes(app: web.Application) -> None:
    app.router.add_routes([
        web.post("/v1/chat/completions", chat.chat_completions),
        web.post("/v1/completions", completions.completions),
        web.post("/tokenize", tokenize.tokenize),
        web.post("/detokenize", tokenize.detokenize),
        web.get("/tokenizer_info", tokenize.tokenizer_info),
        web.get("/v1/models", models.list_models),
        web.get("/v1/models/{model:.+}", models.get_model),
        web.get("/health", health.health),
        web.get("/ready", health.ready),
        web.get("/stats", health.stats),
        web.get("/openapi.json", health.openapi),
    ])
