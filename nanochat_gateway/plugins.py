"""The plugin API: how operators and third parties shape the gateway.

A plugin is a subclass of ``Plugin`` that overrides only the hooks it needs:

    middleware(request, handler)   aiohttp middleware around every request, in config order
    routes()                       extra routes (e.g. GET /metrics)
    openapi_paths()                how /openapi.json describes those routes
    on_request(ctx)                async; sees the validated GenerationContext before it is
                                   queued, may change it or raise APIError to reject it
    on_text(ctx, event)            sync and cheap; sees each text delta of each choice and may
                                   hold text back, rewrite it, or end the choice (event.stop)
    on_response(ctx, result)       async; final usage, finish reasons and timings
    on_event(name, labels)         sync; counters other plugins report (auth failures, ...)
    on_engine_ready(router)        async; once, when every executor has loaded the model
    startup() / cleanup()          async; open and close resources

Plugins are enabled by name in ``[plugins] enabled``; each reads its settings from
``[plugins.<name>]`` through the pydantic model in its ``Settings`` attribute. A name is a
built-in module of the top-level ``plugins`` package, an entry point in the group
``nanochat_gateway.plugins``, or a dotted path ``package.module:Class``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from nanochat_gateway.config import ConfigError, PluginsSettings, Settings
from nanochat_gateway.engine.options import StepInfo as StepInfo  # re-exported for plugins
from nanochat_gateway.engine.request import SamplingParams
from nanochat_gateway.engine.router import Router as Router  # re-exported for plugins

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nanochat_gateway.plugins"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Keys plugins and the gateway share on an aiohttp request (request[KEY]).
REQUEST_ID = web.RequestKey("nanochat_gateway.request_id", str)
API_KEY_NAME = web.RequestKey("nanochat_gateway.api_key_name", str)  # set by api_keys
# the GenerationContext, once a generation route built one
GENERATION: web.RequestKey[GenerationContext] = web.RequestKey("nanochat_gateway.generation")
CLIENT_ADDRESS = web.RequestKey("nanochat_gateway.client", str)  # a proxy-aware client address
# Headers to add to the response, applied just before headers are sent, so they reach
# streamed (SSE) responses too: use add_response_headers().
RESPONSE_HEADERS = web.RequestKey("nanochat_gateway.response_headers", dict)


def exception_status(exc: BaseException, request: web.Request) -> int:
    """The status a client sees when a handler raises `exc`, for middlewares that log or count.

    APIError and aiohttp's HTTPException carry one; a generation that ended records its own
    (499, "client closed request", when it saw the client leave); a reset or cancelled
    connection is 499 too; anything else is 500.
    """
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    ctx: GenerationContext | None = request.get(GENERATION)
    if ctx is not None and ctx.result is not None:
        return ctx.result.status
    if isinstance(exc, ConnectionResetError | asyncio.CancelledError):
        return 499
    return 500


async def handle_and_record(request: web.Request, handler: Handler,
                            record: Callable[[web.Request, int, float], None]) -> web.StreamResponse:
    """Run `handler`, then call ``record(request, status, seconds)`` however it ended: for
    middlewares that log or count outcomes, with the status the client saw (exception_status)."""
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except BaseException as exc:
        status = exception_status(exc, request)
        raise
    finally:
        record(request, status, time.perf_counter() - start)


def add_response_headers(request: web.Request, headers: dict[str, str]) -> None:
    """Attach headers to whatever response this request gets (JSON, SSE or error)."""
    request.setdefault(RESPONSE_HEADERS, {}).update(headers)


class NoSettings(BaseModel):
    """Settings model of a plugin without settings: its table must be empty."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class GenerationContext:
    """One generation request, as plugins see it. Hooks may change the mutable fields."""

    request: web.Request
    request_id: str
    endpoint: str  # "chat.completions" or "completions"
    model: str
    body: Any  # the validated pydantic request body
    # Token ids of every prompt, in order: one for chat; /v1/completions may batch several.
    prompts: list[list[int]]
    max_tokens: int
    n: int  # choices per prompt
    stop: list[str]  # stop strings asked for; the stop_sequences plugin enforces them
    sampling: SamplingParams
    stream: bool
    key_name: str | None = None
    scratch: dict[str, Any] = field(default_factory=dict)  # per-plugin working data, keyed by plugin name
    result: GenerationResult | None = None  # how it ended, set by the gateway just before on_response

    @property
    def client(self) -> str:
        return self.request.get(CLIENT_ADDRESS) or self.request.remote or ""

    @property
    def prompt_ids(self) -> list[int]:
        """The (first) prompt's token ids: the whole prompt unless a completions request batched several."""
        return self.prompts[0]

    @prompt_ids.setter
    def prompt_ids(self, ids: list[int]) -> None:
        self.prompts[0] = ids

    @property
    def choices(self) -> int:
        """Choices in the response: n for each prompt, numbered prompt by prompt."""
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        """Tokens over all prompts, as usage.prompt_tokens counts them."""
        return sum(len(ids) for ids in self.prompts)


@dataclass(slots=True)
class TextEvent:
    """A text delta of one choice on its way to the client."""

    choice: int
    text: str
    final: bool = False  # the engine finished this choice: release anything held back
    stop: bool = False  # set by a plugin to end this choice now (its KV slot is freed)
    finish_reason: str | None = None  # set with stop; "stop" unless the plugin says otherwise


@dataclass
class GenerationResult:
    """How a generation ended, for on_response hooks.

    Times are seconds. queue_seconds, time_to_first_token and the end of decode_seconds are
    measured from the same start (the engine request's submission), so
    time_to_first_token = queue_seconds + prefill_seconds, and end to end = time_to_first_token
    + decode_seconds. With several choices (n, batched prompts) they run side by side: a time
    covers all of them (from the first admission and first token to the last token).
    """

    prompt_tokens: int
    completion_tokens: int
    finish_reasons: list[str | None]
    status: int = 200
    error: str | None = None
    queue_seconds: float | None = None  # submission to admission into KV slots
    time_to_first_token: float | None = None  # submission to the first generated token
    duration: float = 0.0  # the whole generation, plugin hooks and writing the response included
    prefill_seconds: float | None = None  # admission to the first token: the prompt's prefill
    decode_seconds: float | None = None  # first token to last token
    choice_tokens: list[int] = field(default_factory=list)  # completion tokens of each choice

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def time_per_output_token(self) -> float | None:
        """Mean time between a choice's tokens after its first: decode time over the tokens that
        followed the first, counted on the longest choice (choices decode side by side)."""
        longest = max(self.choice_tokens, default=self.completion_tokens)
        if self.decode_seconds is None or longest < 2:
            return None
        return self.decode_seconds / (longest - 1)


@dataclass
class PluginContext:
    """What a plugin may use of the running gateway."""

    app: web.Application
    settings: Settings
    registry: Any  # the app's prometheus_client CollectorRegistry
    router: Router | None = None
    plugins: list[Plugin] = field(default_factory=list)
    # Paths the gateway serves to anyone, such as the chat page and its files: they hold no
    # data, and the page must load before it can ask for a key. Access checks let them through.
    public_paths: set[str] = field(default_factory=set)

    def count(self, event: str, **labels: str) -> None:
        """Report an event (e.g. "auth_failure", reason="missing_key") to every plugin."""
        for plugin in self.plugins:
            if plugin.handles_events:
                try:
                    plugin.on_event(event, labels)
                except Exception:  # counting must never fail the request that reported it
                    log.exception("plugin %s failed in on_event(%r)", plugin.name, event)


class Plugin:
    """Base class of every plugin. Override only what you need."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type[BaseModel]] = NoSettings

    def __init__(self, settings: BaseModel, context: PluginContext):
        self.settings = settings
        self.context = context
        if self.has_middleware:
            # web.middleware() marks its argument with an attribute, which a bound method refuses.
            bound = self.middleware

            async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
                return await bound(request, handler)

            self.middleware = middleware  # type: ignore[method-assign]

    # ---- lifecycle
    async def startup(self) -> None:
        """Open resources (connections, files). Runs before the server accepts requests."""

    async def cleanup(self) -> None:
        """Close what startup opened. Runs at shutdown, in reverse plugin order."""

    # ---- HTTP
    def routes(self) -> Iterable[web.AbstractRouteDef]:
        """Extra routes this plugin serves."""
        return ()

    def openapi_paths(self) -> dict[str, dict[str, Any]]:
        """OpenAPI 3.1 path items describing ``routes()``, keyed by path, for /openapi.json."""
        return {}

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Runs around every request (plugins in config order, outermost first)."""
        return await handler(request)

    # ---- generation hooks
    async def on_request(self, ctx: GenerationContext) -> None:
        """Inspect or change a validated generation request; raise APIError to reject it."""

    def on_text(self, ctx: GenerationContext, event: TextEvent) -> None:
        """Called for every text delta of every choice; must be cheap and never block."""

    async def on_response(self, ctx: GenerationContext, result: GenerationResult) -> None:
        """Called once when a generation ends (success, stop, error or disconnect)."""

    def on_event(self, event: str, labels: dict[str, str]) -> None:
        """Receive events other plugins report through PluginContext.count."""

    async def on_engine_ready(self, router: Router) -> None:
        """Called once, when every executor has loaded the model (attach step listeners here)."""

    # ---- which hooks are overridden (the gateway calls only those)
    def _overrides(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(Plugin, hook)

    @property
    def has_middleware(self) -> bool:
        return self._overrides("middleware")

    @property
    def handles_text(self) -> bool:
        return self._overrides("on_text")

    @property
    def handles_events(self) -> bool:
        return self._overrides("on_event")


# ----------------------------------------------------------------------------- loading
def resolve_plugin_class(name: str) -> type[Plugin]:
    """Find a plugin class by built-in name, entry point, or ``package.module:Class``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"[plugins] enabled: cannot load {name!r} ({exc})") from None
        return _check_plugin_class(cls, name)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            try:
                return _check_plugin_class(entry.load(), name)
            except ImportError as exc:
                raise ConfigError(f"[plugins] enabled: entry point {name!r} failed to load ({exc})") from None
    try:
        module = importlib.import_module(f"plugins.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in (f"plugins.{name}", "plugins"):
            raise
        raise ConfigError(
            f"[plugins] enabled: unknown plugin {name!r}: not a built-in, not an entry point in "
            f"group {ENTRY_POINT_GROUP!r}, and not a dotted path 'package.module:Class'"
        ) from None
    classes = [c for c in vars(module).values()
               if inspect.isclass(c) and issubclass(c, Plugin) and c is not Plugin and c.__module__ == module.__name__]
    if len(classes) != 1:
        raise ConfigError(f"[plugins] enabled: built-in module plugins.{name} must define exactly one Plugin")
    return classes[0]


def _check_plugin_class(cls: Any, name: str) -> type[Plugin]:
    if not (inspect.isclass(cls) and issubclass(cls, Plugin)):
        raise ConfigError(f"[plugins] enabled: {name!r} is not a subclass of nanochat_gateway.plugins.Plugin")
    return cls


def plugin_table_name(config_name: str, cls: type[Plugin]) -> str:
    """The [plugins.<name>] table a plugin reads: its class name attribute, or the config name."""
    return cls.name or config_name


def load_plugins(settings: PluginsSettings, context: PluginContext, *, source: str = "config.toml") -> list[Plugin]:
    """Instantiate the enabled plugins in order, validating each one's settings table."""
    plugins: list[Plugin] = []
    used_tables: set[str] = set()
    for config_name in settings.enabled:
        cls = resolve_plugin_class(config_name)
        table_name = plugin_table_name(config_name, cls)
        raw = settings.table(table_name) or settings.table(config_name)
        used_tables.update({table_name, config_name})
        try:
            plugin_settings = cls.Settings.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError.from_validation_error(
                exc, cls.Settings, source=source, prefix=("plugins", table_name), raw=raw
            ) from None
        plugin = cls(plugin_settings, context)
        if not type(plugin).name:
            plugin.name = table_name  # type: ignore[misc]  # instance attribute shadows the ClassVar
        plugins.append(plugin)
    for table in set(settings.tables()) - used_tables:
        log.warning("[plugins.%s] is configured but %r is not in [plugins] enabled", table, table)
    context.plugins = plugins
    return plugins
