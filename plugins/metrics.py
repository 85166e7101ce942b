"""metrics: Prometheus metrics at GET /metrics, from the app's own registry.

Every metric is registered on ``PluginContext.registry`` (one registry per app, never the
global one), so two gateways in one process never collide. Label values are bounded:
endpoints are route patterns (unknown paths are "other"), methods a fixed set, and
labels that come from other plugins' events are capped.

HTTP (middleware; put ``metrics`` early in ``enabled`` so it also sees rejected requests):
    nanochat_http_requests_total{endpoint,method,status,model_name}        counter
    nanochat_http_request_duration_seconds{endpoint,method}                histogram
Generations (on_response, once per request; an SSE response is HTTP 200 even when it ended in an
error event). Times start when the request is submitted to the engine: queue time ends at
admission into KV slots, prefill time runs from admission to the first token, decode time from
the first token to the last, and time per output token is decode time over the tokens after the
first (of the longest choice), i.e. (end to end - time to first token) / (output tokens - 1):
    nanochat_generation_requests_total{endpoint,model_name,status}         counter (499 = client gone)
    nanochat_request_finish_reason_total{model_name,finish_reason}         counter, one per choice
    nanochat_client_disconnects_total{endpoint,model_name}                 counter
    nanochat_prompt_tokens_total{model_name}                               counter
    nanochat_generation_tokens_total{model_name}                           counter
    nanochat_request_prompt_tokens{model_name}                             histogram (per request)
    nanochat_request_generation_tokens{model_name}                         histogram (per request)
    nanochat_request_params_max_tokens{model_name}                         histogram (max tokens per choice)
    nanochat_request_params_n{model_name}                                  histogram (choices per prompt)
    nanochat_time_to_first_token_seconds{model_name}                       histogram
    nanochat_time_per_output_token_seconds{model_name}                     histogram
    nanochat_request_queue_time_seconds{model_name}                        histogram
    nanochat_request_prefill_time_seconds{model_name}                      histogram
    nanochat_request_decode_time_seconds{model_name}                       histogram
    nanochat_e2e_request_latency_seconds{model_name}                       histogram
Executors (read from the router at scrape time, so nothing goes stale):
    nanochat_num_requests_running{executor,device}                    gauge
    nanochat_num_requests_waiting{executor,device}                    gauge
    nanochat_kv_slots_used{executor,device}                           gauge
    nanochat_kv_slots_total{executor,device}                          gauge
    nanochat_executor_ready{executor,device}                          gauge (1 = serving)
    nanochat_prefix_cache_queries_total{executor,device}              counter (prompt tokens looked up)
    nanochat_prefix_cache_hits_total{executor,device}                 counter (of those, tokens reused)
      vLLM's names; hit rate = rate(hits) / rate(queries). Requests that opt out with
      cache_prompt: false are not counted.
Engine steps (a listener on each executor, attached in on_engine_ready, called on its thread):
    nanochat_batch_size{executor}                                     histogram (rows per step)
    nanochat_step_duration_seconds{executor}                          histogram
    nanochat_prefill_tokens_total{executor}                           counter
    nanochat_decode_tokens_total{executor}                            counter
Events other plugins report with PluginContext.count:
    nanochat_auth_failures_total{reason}                              counter ("auth_failure")
    nanochat_rate_limit_rejections_total{limit}                       counter ("rate_limit_rejected")
    nanochat_rate_limit_backend_errors_total{policy}                  counter ("rate_limit_backend_error")
    nanochat_plugin_events_total{event}                               counter (any other event)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nanochat_gateway.plugins import (
    GENERATION,
    GenerationContext,
    GenerationResult,
    Handler,
    Plugin,
    PluginContext,
    Router,
    StepInfo,
    handle_and_record,
)

if TYPE_CHECKING:
    from nanochat_gateway.engine.executor import DeviceExecutor

# vLLM's latency buckets (vllm/v1/metrics/loggers.py) with extra 0.2-1 s resolution, where CPU decoding lives.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6,
                0.75, 0.9, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
               40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0,
                 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# 1-2-5 steps from 1 to 100k tokens (vLLM builds the same series up to the context length).
TOKEN_BUCKETS = tuple(float(m * 10**e) for e in range(6) for m in (1, 2, 5) if m * 10**e <= 100_000)
N_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                2.5, 5.0, 10.0)

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_LABEL_VALUES = 64  # distinct values per event label before the rest become "other"


class MetricsSettings(BaseModel):
    """``[plugins.metrics]``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field("/metrics", description="Path of the Prometheus endpoint.")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


def route_label(request: web.Request) -> str:
    """The matched route pattern ("/v1/models/{model}"), or "other": never the raw path."""
    try:
        resource = request.match_info.route.resource
    except AttributeError:
        return "other"
    return resource.canonical if resource is not None else "other"


class BoundedLabel:
    """Caps the distinct values of one label so a misbehaving caller cannot blow up cardinality."""

    def __init__(self, limit: int = MAX_LABEL_VALUES):
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: Any) -> str:
        text = str(value)[:64] if value is not None else ""
        if text in self.seen:
            return text
        if len(self.seen) >= self.limit:
            return "other"
        self.seen.add(text)
        return text


class ExecutorCollector(Collector):
    """Per-executor gauges and engine counters read from the router on every scrape (empty
    before the router exists)."""

    GAUGES: tuple[tuple[str, str, Callable[[DeviceExecutor], int]], ...] = (
        ("nanochat_num_requests_running", "Requests generating on this executor.", lambda e: e.running),
        ("nanochat_num_requests_waiting", "Requests queued for a KV slot.", lambda e: e.waiting),
        ("nanochat_kv_slots_used", "KV-cache slots (rows) in use.", lambda e: e.slots_used),
        ("nanochat_kv_slots_total", "KV-cache slots (rows) of this executor.", lambda e: e.options.max_batch_size),
        ("nanochat_executor_ready", "1 when the executor serves requests.", lambda e: int(e.status == "ready")),
    )
    COUNTERS = (
        ("nanochat_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
         lambda e: e.counters.prefix_cache_queries),
        ("nanochat_prefix_cache_hits", "Prompt tokens whose KV the prefix cache supplied.",
         lambda e: e.counters.prefix_cache_hits),
    )

    def __init__(self, plugin: Metrics):
        self.plugin = plugin

    def _families(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["executor", "device"]
        gauges: list[GaugeMetricFamily | CounterMetricFamily] = [
            GaugeMetricFamily(name, doc, labels=labels) for name, doc, _ in self.GAUGES]
        return gauges + [CounterMetricFamily(name, doc, labels=labels) for name, doc, _ in self.COUNTERS]

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        return self._families()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        families = self._families()
        router = self.plugin.context.router
        for executor in router.executors if router is not None else ():
            labels = [executor.name, str(executor.device)]
            for family, (_, _, read) in zip(families, self.GAUGES + self.COUNTERS, strict=True):
                family.add_metric(labels, read(executor))
        yield from families


class Metrics(Plugin):
    """Prometheus metrics for HTTP requests, generations, executors and plugin events."""

    name = "metrics"
    Settings = MetricsSettings
    settings: MetricsSettings

    def __init__(self, settings: MetricsSettings, context: PluginContext):
        super().__init__(settings, context)
        self.registry: CollectorRegistry = context.registry if context.registry is not None else CollectorRegistry()
        self._own: list[Any] = []
        self._listeners: list[tuple[DeviceExecutor, Callable[[StepInfo], None]]] = []
        self._labels = {"reason": BoundedLabel(), "limit": BoundedLabel(), "policy": BoundedLabel(),
                        "event": BoundedLabel(), "finish_reason": BoundedLabel()}
        self._build()

    def _metric(self, cls: type, name: str, doc: str, labels: list[str], **kwargs: Any) -> Any:
        metric = cls(name, doc, labels, registry=self.registry, **kwargs)
        self._own.append(metric)
        return metric

    def _build(self) -> None:
        c, h = Counter, Histogram
        m = ["model_name"]
        self.http_requests = self._metric(c, "nanochat_http_requests", "HTTP requests by route, method, status.",
                                          ["endpoint", "method", "status", "model_name"])
        self.http_duration = self._metric(h, "nanochat_http_request_duration_seconds",
                                          "Time from request to the end of the response (streams included).",
                                          ["endpoint", "method"], buckets=E2E_BUCKETS)
        self.generations = self._metric(c, "nanochat_generation_requests", "Generations by outcome status.",
                                        ["endpoint", "model_name", "status"])
        self.finish_reasons = self._metric(c, "nanochat_request_finish_reason", "Finished choices by reason.",
                                           ["model_name", "finish_reason"])
        self.disconnects = self._metric(c, "nanochat_client_disconnects", "Generations the client abandoned.",
                                        ["endpoint", "model_name"])
        self.prompt_tokens = self._metric(c, "nanochat_prompt_tokens", "Prompt tokens processed.", m)
        self.generation_tokens = self._metric(c, "nanochat_generation_tokens", "Tokens generated.", m)
        self.request_prompt_tokens = self._metric(h, "nanochat_request_prompt_tokens",
                                                  "Prompt tokens of one request.", m, buckets=TOKEN_BUCKETS)
        self.request_generation_tokens = self._metric(h, "nanochat_request_generation_tokens",
                                                      "Tokens generated for one request (all its choices).", m,
                                                      buckets=TOKEN_BUCKETS)
        self.max_tokens = self._metric(h, "nanochat_request_params_max_tokens",
                                       "The most tokens a request allowed each choice.", m, buckets=TOKEN_BUCKETS)
        self.n = self._metric(h, "nanochat_request_params_n", "Choices asked for per prompt.", m, buckets=N_BUCKETS)
        self.ttft = self._metric(h, "nanochat_time_to_first_token_seconds", "Submission to the first token.",
                                 m, buckets=TTFT_BUCKETS)
        self.tpot = self._metric(h, "nanochat_time_per_output_token_seconds",
                                 "Mean time between a choice's tokens after its first.", m, buckets=TPOT_BUCKETS)
        self.queue = self._metric(h, "nanochat_request_queue_time_seconds",
                                  "Submission to admission into KV slots.", m, buckets=QUEUE_BUCKETS)
        self.prefill = self._metric(h, "nanochat_request_prefill_time_seconds",
                                    "Admission to the first token (the prompt's prefill).", m, buckets=TTFT_BUCKETS)
        self.decode = self._metric(h, "nanochat_request_decode_time_seconds", "First token to last token.",
                                   m, buckets=E2E_BUCKETS)
        self.e2e = self._metric(h, "nanochat_e2e_request_latency_seconds", "Generation start to end.",
                                m, buckets=E2E_BUCKETS)
        self.batch_size = self._metric(h, "nanochat_batch_size", "Rows in one engine step.", ["executor"],
                                       buckets=BATCH_BUCKETS)
        self.step_seconds = self._metric(h, "nanochat_step_duration_seconds", "Duration of one engine step.",
                                         ["executor"], buckets=STEP_BUCKETS)
        self.prefill_tokens = self._metric(c, "nanochat_prefill_tokens", "Prompt tokens prefilled.", ["executor"])
        self.decode_tokens = self._metric(c, "nanochat_decode_tokens", "Tokens decoded.", ["executor"])
        self.auth_failures = self._metric(c, "nanochat_auth_failures", "Rejected API keys by reason.", ["reason"])
        self.rate_limited = self._metric(c, "nanochat_rate_limit_rejections", "Requests refused by rate limits.",
                                         ["limit"])
        self.rate_limit_errors = self._metric(c, "nanochat_rate_limit_backend_errors",
                                              "Rate-limit backend failures by policy.", ["policy"])
        self.events = self._metric(c, "nanochat_plugin_events", "Other plugin events by name.", ["event"])
        self.collector = ExecutorCollector(self)
        self.registry.register(self.collector)
        self._own.append(self.collector)

    # ------------------------------------------------------------------ lifecycle
    async def cleanup(self) -> None:
        self._detach()
        for metric in self._own:  # frees the names, so a new app may reuse this registry
            self.registry.unregister(metric)
        self._own.clear()

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get(self.settings.path, self.scrape)]

    def openapi_paths(self) -> dict[str, dict[str, Any]]:
        text = {"text/plain": {"schema": {"type": "string"}}}
        return {self.settings.path: {"get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "responses": {
                "200": {"description": "Metrics in the Prometheus text exposition format (OpenMetrics when the "
                                       "Accept header asks for it).", "content": text},
                "401": {"description": "Missing or wrong API key or metrics token (when configured).",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}},
            },
        }}}

    async def scrape(self, request: web.Request) -> web.Response:
        """GET /metrics: text format, or OpenMetrics when the scraper asks for it."""
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # headers=, not content_type=: aiohttp refuses a charset inside content_type.
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    # ------------------------------------------------------------ engine steps
    async def on_engine_ready(self, router: Router) -> None:
        """Attach one step listener per executor."""
        for executor in router.executors:
            listener = self._step_listener(executor.name)
            executor.hooks.listeners.append(listener)
            self._listeners.append((executor, listener))

    def _detach(self) -> None:
        for executor, listener in self._listeners:
            if listener in executor.hooks.listeners:
                executor.hooks.listeners.remove(listener)
        self._listeners.clear()

    def _step_listener(self, executor: str) -> Callable[[StepInfo], None]:
        # Children bound once: the listener runs on the executor thread after every step.
        batch, seconds = self.batch_size.labels(executor), self.step_seconds.labels(executor)
        prefill, decode = self.prefill_tokens.labels(executor), self.decode_tokens.labels(executor)

        def on_step(info: StepInfo) -> None:
            batch.observe(info.batch_size)
            seconds.observe(info.seconds)
            if info.prefill_tokens:
                prefill.inc(info.prefill_tokens)
            if info.decode_tokens:
                decode.inc(info.decode_tokens)

        return on_step

    # --------------------------------------------------------------------- HTTP
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handle_and_record(request, handler, self._count_http)

    def _count_http(self, request: web.Request, status: int, seconds: float) -> None:
        endpoint = route_label(request)
        method = request.method if request.method in METHODS else "other"
        ctx = request.get(GENERATION)
        model = ctx.model if ctx is not None else ""
        self.http_requests.labels(endpoint, method, str(status), model).inc()
        self.http_duration.labels(endpoint, method).observe(seconds)

    # -------------------------------------------------------------- generation
    async def on_response(self, ctx: GenerationContext, result: GenerationResult) -> None:
        model = ctx.model or ""
        self.generations.labels(ctx.endpoint, model, str(result.status)).inc()
        if result.status == 499:
            self.disconnects.labels(ctx.endpoint, model).inc()
        for reason in result.finish_reasons:
            if reason is None:
                reason = "abort" if result.status == 499 else "error"
            self.finish_reasons.labels(model, self._labels["finish_reason"](reason)).inc()
        self.prompt_tokens.labels(model).inc(result.prompt_tokens)
        self.generation_tokens.labels(model).inc(result.completion_tokens)
        self.request_prompt_tokens.labels(model).observe(result.prompt_tokens)
        self.request_generation_tokens.labels(model).observe(result.completion_tokens)
        self.max_tokens.labels(model).observe(ctx.max_tokens)
        self.n.labels(model).observe(ctx.n)
        timings = ((self.ttft, result.time_to_first_token), (self.tpot, result.time_per_output_token),
                   (self.queue, result.queue_seconds), (self.prefill, result.prefill_seconds),
                   (self.decode, result.decode_seconds), (self.e2e, result.duration))
        for histogram, seconds in timings:
            if seconds is not None:
                histogram.labels(model).observe(seconds)

    # ------------------------------------------------------------------ events
    def on_event(self, event: str, labels: dict[str, str]) -> None:
        if event == "auth_failure":
            self.auth_failures.labels(self._labels["reason"](labels.get("reason", "unknown"))).inc()
        elif event == "rate_limit_rejected":
            self.rate_limited.labels(self._labels["limit"](labels.get("limit", "unknown"))).inc()
        elif event == "rate_limit_backend_error":
            self.rate_limit_errors.labels(self._labels["policy"](labels.get("policy", "unknown"))).inc()
        else:  # unknown events keep only their (capped) name: their labels are not bounded
            self.events.labels(self._labels["event"](event)).inc()
