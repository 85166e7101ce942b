"""served_by: an x-served-by header on every response, and generations counted per caller.

Enable it by its entry point name ``served_by`` (once the package is installed) or by its
dotted path ``example_plugin.plugin:ServedBy``; either way it reads [plugins.served_by].
The counts are served as JSON at GET /example/counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nanochat_gateway.plugins import GenerationContext, Handler, Plugin, PluginContext, add_response_headers


class ServedBySettings(BaseModel):
    """[plugins.served_by]"""

    model_config = ConfigDict(extra="forbid")  # a misspelt key stops start-up instead of being ignored

    served_by: str = Field("nanochat-gateway", min_length=1, description="Value of the x-served-by header.")
    counts_path: str = Field("/example/counts", pattern=r"^/", description="Where the counts are served.")
    max_callers: int = Field(1000, ge=1, description="Callers counted by name; later ones count as 'other'.")


class ServedBy(Plugin):
    """Adds x-served-by to every response and counts generations per API key name or user."""

    name = "served_by"
    Settings = ServedBySettings

    def __init__(self, settings: ServedBySettings, context: PluginContext):
        super().__init__(settings, context)
        self.counts: Counter[str] = Counter()

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Not response.headers: a streamed (SSE) response has sent its headers before it returns.
        add_response_headers(request, {"x-served-by": self.settings.served_by})
        return await handler(request)

    async def on_request(self, ctx: GenerationContext) -> None:
        # The API key's name when api_keys is enabled, else the (untrusted) OpenAI `user` field.
        caller = ctx.key_name or getattr(ctx.body, "user", None) or "anonymous"
        if caller not in self.counts and len(self.counts) >= self.settings.max_callers:
            caller = "other"  # bounded memory, whatever clients send
        self.counts[caller] += 1

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get(self.settings.counts_path, self.show_counts)]

    async def show_counts(self, request: web.Request) -> web.Response:
        """GET /example/counts: {"served_by": ..., "requests": {caller: count}}."""
        return web.json_response({"served_by": self.settings.served_by, "requests": dict(self.counts)})
