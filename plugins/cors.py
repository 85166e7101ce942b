"""cors: Cross-Origin Resource Sharing, so browser apps can call the API directly.

Preflight requests (OPTIONS with Access-Control-Request-Method) are answered here with
204 and never reach a handler; a preflight from an origin that is not allowed gets 403.
Every other response to an allowed origin, including errors and SSE streams, carries
Access-Control-Allow-Origin and Access-Control-Expose-Headers (added with
add_response_headers, so they are set just before the headers go out).

Ordering: list ``cors`` before ``api_keys`` in ``[plugins] enabled``. Preflights carry no
credentials, and a 401 without CORS headers is unreadable to the page. (api_keys also
lets OPTIONS through, so a preflight passes either way, but error responses from plugins
listed before ``cors`` have no CORS headers.)

``allow_origins = ["*"]`` answers ``*`` unless ``allow_credentials`` is set, in which case
the request's Origin is echoed back (browsers refuse ``*`` with credentials).
``allow_headers = ["*"]`` echoes whatever the preflight asks for.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nanochat_gateway.plugins import Handler, Plugin, PluginContext, add_response_headers

RATE_LIMIT_HEADERS = [
    f"x-ratelimit-{kind}-{unit}" for kind in ("limit", "remaining", "reset") for unit in ("requests", "tokens")
]


class CorsSettings(BaseModel):
    """``[plugins.cors]``."""

    model_config = ConfigDict(extra="forbid")

    allow_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description='Origins allowed to call the API ("https://app.example.com"), or "*" for any.',
    )
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "OPTIONS"])
    allow_headers: list[str] = Field(
        default_factory=lambda: ["Authorization", "Content-Type", "x-api-key", "x-request-id"],
        description='Request headers a page may send; "*" allows whatever the preflight asks for.',
    )
    expose_headers: list[str] = Field(
        default_factory=lambda: ["x-request-id", *RATE_LIMIT_HEADERS, "retry-after"],
        description="Response headers a page may read.",
    )
    max_age: int = Field(600, ge=0, description="Seconds a browser may cache a preflight answer.")
    allow_credentials: bool = Field(False, description="Allow cookies and HTTP auth (echoes the origin).")

    @field_validator("allow_origins")
    @classmethod
    def _normalise_origins(cls, value: list[str]) -> list[str]:
        origins = []
        for origin in value:
            if origin != "*" and "://" not in origin:
                raise ValueError(f"{origin!r} is not an origin like 'https://example.com' or '*'")
            # Browsers send "scheme://host[:port]" in lower case and without a trailing slash.
            origins.append(origin.rstrip("/").lower())
        return origins

    @field_validator("allow_methods")
    @classmethod
    def _upper_methods(cls, value: list[str]) -> list[str]:
        return [method.upper() for method in value]


class Cors(Plugin):
    """Answers CORS preflights and adds CORS headers to every response for allowed origins."""

    name = "cors"
    Settings = CorsSettings
    settings: CorsSettings

    def __init__(self, settings: CorsSettings, context: PluginContext):
        super().__init__(settings, context)
        self._any_origin = "*" in settings.allow_origins
        self._origins = frozenset(settings.allow_origins)
        self._any_header = "*" in settings.allow_headers
        self._methods = ", ".join(settings.allow_methods)
        self._headers = ", ".join(settings.allow_headers)
        self._expose = ", ".join(settings.expose_headers)

    def allowed_origin(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin value for `origin`, or None when it is not allowed."""
        if self._any_origin:
            return origin if self.settings.allow_credentials else "*"
        return origin if origin.rstrip("/").lower() in self._origins else None

    def _common(self, allow: str) -> dict[str, str]:
        headers = {"Access-Control-Allow-Origin": allow}
        if allow != "*":  # the answer depends on Origin: caches must key on it
            headers["Vary"] = "Origin"
        if self.settings.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        allow = self.allowed_origin(origin)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return self._preflight(request, allow)
        if allow is not None:
            headers = self._common(allow)
            if self._expose:
                headers["Access-Control-Expose-Headers"] = self._expose
            add_response_headers(request, headers)
        return await handler(request)

    def _preflight(self, request: web.Request, allow: str | None) -> web.Response:
        if allow is None:
            error = {"message": "This origin may not call this API (CORS).", "type": "invalid_request_error",
                     "param": None, "code": "cors_origin_not_allowed"}
            return web.json_response({"error": error}, status=403)
        headers = self._common(allow)
        headers["Access-Control-Allow-Methods"] = self._methods
        requested = request.headers.get("Access-Control-Request-Headers", "")
        if self._any_header:
            if requested:
                headers["Access-Control-Allow-Headers"] = requested
                headers["Vary"] = ", ".join(filter(None, [headers.get("Vary"), "Access-Control-Request-Headers"]))
        elif self._headers:
            headers["Access-Control-Allow-Headers"] = self._headers
        headers["Access-Control-Max-Age"] = str(self.settings.max_age)
        return web.Response(status=204, headers=headers)
