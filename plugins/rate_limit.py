"""rate_limit: per-key (or per-client-IP) request, token and concurrency limits, with OpenAI's headers.

Identity: the API key's name (``request[API_KEY_NAME]``; list ``api_keys`` first in ``[plugins]
enabled``), else the client address: the peer, or, when the peer is in ``trusted_proxies``, the
right-most ``X-Forwarded-For`` address that is not a trusted proxy. Only ``paths`` are limited.

Algorithm: GCRA (generic cell rate algorithm), exact, smooth, one number per key. A limit of L per
minute (T = 60 s) has emission interval I = T / L and burst L. Each key keeps a theoretical arrival
time TAT (absent = now). A request costing c units at time t:

    tat' = max(TAT, t) + c * I;  admitted iff tat' - t <= T, and then TAT := tat'
    refused: Retry-After = tat' - t - T (when it would be admitted, if nothing else arrives);
    c > L is never admissible: 429 with ``x-should-retry: false`` and no Retry-After

That is a bucket of L units refilled continuously at L per minute, full at first: L may pass at
once, then one per I; any window of W seconds admits at most L + W * L / T. Headers: remaining =
floor((T - max(TAT - t, 0)) / I), usable now; reset = max(TAT - t, 0), until the bucket is full;
durations as OpenAI (Go) writes them: "120ms", "1s", "6m0s".

- requests_per_minute: c = 1 in the middleware, after api_keys, so a 401 spends nothing.
- tokens_per_minute: c = prompt tokens + max_tokens * n, reserved in on_request; on_response
  returns the unused part (TAT := max(TAT - unused * I, t)), a request that never ran all of it.
- max_concurrent: requests in flight; the slot is freed when the middleware ends, however it ends
  (error, client gone, cancelled). Refusals say Retry-After 1 s. Admission is all-or-nothing: a
  request refused for concurrency spends no request budget.

Backends: ``memory`` (one process; nothing awaits between check and update) and ``redis`` (shared
by replicas; each operation is one atomic Lua script on Redis' own clock, ``TIME``, so replica
clocks do not matter; keys are prefixed, hash-tagged per identity and expire when they hold no
state; slots are leases in a sorted set that lapse after request_timeout_s + 60 s, so a crashed
replica cannot leak them). A Redis failure follows ``on_redis_error`` (fail_open: pass unlimited;
fail_closed: 503), is counted as ``rate_limit_backend_error`` and logged at most every 10 s; for
1 s after one, admission does not wait for Redis, so an outage adds no timeout to every request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nanochat_gateway.api import errors
from nanochat_gateway.plugins import (
    API_KEY_NAME,
    CLIENT_ADDRESS,
    GenerationContext,
    GenerationResult,
    Handler,
    Plugin,
    PluginContext,
    add_response_headers,
)
from plugins.rate_limit_backends import (
    Backend,
    Decision,
    Limits,
    MemoryBackend,
    RedisBackend,
    RedisOptions,
    format_duration,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

BREAKER_S = 1.0
LOG_EVERY_S = 10.0


class RateLimitSettings(BaseModel):
    """The ``[plugins.rate_limit]`` table; every limit is per identity and 0 means off."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0, description="prompt + max_tokens * n reserved, then corrected")
    max_concurrent: int = Field(0, ge=0, description="requests in flight per identity")
    paths: list[str] = Field(default_factory=lambda: ["/v1/chat/completions", "/v1/completions"])
    trusted_proxies: list[str] = Field(default_factory=list, description="IPs/CIDRs whose X-Forwarded-For counts")
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = Field(0.25, gt=0, le=10, description="connect and read timeout")
    key_prefix: str = "ncg:rl:"
    on_redis_error: Literal["fail_open", "fail_closed"] = "fail_open"

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
        return value


@dataclass(slots=True)
class _Tracking:
    identity: str
    member: str  # unique per request: names its concurrency lease
    holds_slot: bool = False
    reserved: int = 0  # tokens reserved and not yet settled


_TRACKING = web.RequestKey("nanochat_gateway.rate_limit", _Tracking)


class RateLimit(Plugin):
    """Per-identity requests, tokens and concurrency limits (see the module docstring)."""

    name = "rate_limit"
    Settings = RateLimitSettings
    settings: RateLimitSettings

    def __init__(self, settings: RateLimitSettings, context: PluginContext) -> None:
        super().__init__(settings, context)
        self.trusted = [ip_network(entry, strict=False) for entry in settings.trusted_proxies]
        self.paths = frozenset(settings.paths)
        self.active = bool(settings.requests_per_minute or settings.tokens_per_minute or settings.max_concurrent)
        lease_s = context.settings.server.request_timeout_s + 60.0  # no request outlives its deadline
        limits = Limits(settings.requests_per_minute, settings.tokens_per_minute, settings.max_concurrent)
        self.backend: Backend = (
            RedisBackend(limits, RedisOptions(settings.redis_url, settings.redis_timeout_s, settings.key_prefix),
                         lease_s)
            if settings.backend == "redis" else MemoryBackend(limits))
        self.backend_errors = 0
        self._skip_until = 0.0
        self._last_log, self._unlogged = -math.inf, 0

    async def startup(self) -> None:
        names = [plugin.name for plugin in self.context.plugins]
        if "api_keys" in names and names.index("api_keys") > names.index(self.name):
            log.warning("rate_limit: listed before api_keys in [plugins] enabled, so limits apply per "
                        "client address, not per key; list api_keys first")
        if not self.active:
            log.info("rate_limit: enabled but every limit is 0, so nothing is limited")
        await self.backend.start()

    async def cleanup(self) -> None:
        await self.backend.close()

    # ------------------------------------------------------------------ identity
    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        ip = getattr(ip, "ipv4_mapped", None) or ip
        return any(ip in network for network in self.trusted)

    def client_address(self, request: web.Request) -> str:
        """The client's address: the peer, or from X-Forwarded-For when the peer is a trusted proxy."""
        peer = request.remote or ""
        if not self.trusted or not self._is_trusted(peer):
            return peer
        hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", ())
                for hop in value.split(",") if hop.strip()]
        for hop in reversed(hops):  # proxies append, so only the right end is trustworthy
            if not self._is_trusted(hop):
                return hop[:64]
        return hops[0][:64] if hops else peer

    # ------------------------------------------------------------------ hooks
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[CLIENT_ADDRESS] = self.client_address(request)
        if not self.active or request.method == "OPTIONS" or request.path not in self.paths:
            return await handler(request)
        key_name = request.get(API_KEY_NAME)
        track = _Tracking(f"key:{key_name}" if key_name else f"ip:{request[CLIENT_ADDRESS]}", uuid.uuid4().hex)
        decision = await self._guarded(lambda: self.backend.admit(track.identity, track.member))
        if decision is not None:
            self._add_headers(request, decision)
            if not decision.ok:
                self._reject(decision)
            track.holds_slot = bool(self.settings.max_concurrent)
        request[_TRACKING] = track
        try:
            return await handler(request)
        finally:
            # Shielded: a cancelled handler must still give its slot and reservation back.
            await asyncio.shield(self._settle(request, track, used=0, release=True))

    async def on_request(self, ctx: GenerationContext) -> None:
        track = ctx.request.get(_TRACKING)
        if track is None or not self.settings.tokens_per_minute:
            return
        cost = ctx.prompt_tokens + ctx.max_tokens * ctx.choices
        decision = await self._guarded(lambda: self.backend.reserve(track.identity, cost))
        if decision is None:
            return
        self._add_headers(ctx.request, decision)
        if not decision.ok:
            self._reject(decision, cost)
        track.reserved = cost

    async def on_response(self, ctx: GenerationContext, result: GenerationResult) -> None:
        track = ctx.request.get(_TRACKING)
        if track is not None:
            await self._settle(ctx.request, track, used=result.total_tokens, release=False)

    # ------------------------------------------------------------------ helpers
    async def _settle(self, request: web.Request, track: _Tracking, used: int, release: bool) -> None:
        """Return the unused part of the token reservation and, at the end, the slot; never raises."""
        unused, track.reserved = max(track.reserved - used, 0), 0
        if unused:
            tokens = await self._quietly(self.backend.refund(track.identity, unused))
            if tokens is not None:
                self._add_headers(request, Decision(True, tokens=tokens))  # reaches responses not yet sent
        if release and track.holds_slot:
            track.holds_slot = False
            await self._quietly(self.backend.release(track.identity, track.member))

    async def _guarded(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        """Run an admission check; on a backend failure apply on_redis_error (None: let it pass)."""
        if time.monotonic() >= self._skip_until:
            try:
                return await operation()
            except self.backend.errors as exc:
                self._skip_until = time.monotonic() + BREAKER_S
                self._backend_failed(exc)
        else:
            self._backend_failed(None)
        if self.settings.on_redis_error == "fail_closed":
            raise errors.unavailable("The rate limiter is unavailable; try again shortly.",
                                     code="rate_limiter_unavailable", retry_after_s=BREAKER_S)
        return None

    async def _quietly(self, operation: Awaitable[T]) -> T | None:
        # Releases and refunds are always attempted (a lost one only expires later) and never raise.
        try:
            return await operation
        except self.backend.errors as exc:
            self._backend_failed(exc)
            return None

    def _backend_failed(self, exc: BaseException | None) -> None:
        policy = self.settings.on_redis_error
        self.backend_errors += 1
        self.context.count("rate_limit_backend_error", policy=policy)
        self._unlogged += 1
        now = time.monotonic()
        if exc is not None and now - self._last_log >= LOG_EVERY_S:
            log.warning("rate_limit: the %s backend failed (%s: %s); %s; %d failure(s) since the last report",
                        self.settings.backend, type(exc).__name__, exc, policy.replace("_", " "), self._unlogged)
            self._last_log, self._unlogged = now, 0

    def _add_headers(self, request: web.Request, decision: Decision) -> None:
        headers = {}
        for kind, q in (("requests", decision.requests), ("tokens", decision.tokens)):
            if q is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(q.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(q.remaining)
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(q.reset_s)
        add_response_headers(request, headers)

    def _reject(self, decision: Decision, cost: int = 1) -> None:
        kind = decision.limit or "requests"
        self.context.count("rate_limit_rejected", limit=kind)
        retry = decision.retry_after_s
        if kind == "concurrency":
            message = f"Too many requests in flight (limit {self.settings.max_concurrent})."
        elif retry is None:
            message = (f"This request needs {cost} tokens (prompt + max_tokens x n) but the limit is "
                       f"{self.settings.tokens_per_minute} tokens per minute; lower max_tokens.")
        else:
            per_minute = self.settings.requests_per_minute if kind == "requests" else self.settings.tokens_per_minute
            message = f"Rate limit reached for {kind} per minute (limit {per_minute})."
        if retry is not None:
            message += f" Please try again in {format_duration(retry)}."
        err = errors.rate_limited(message, retry)
        if retry is None:
            err.headers["x-should-retry"] = "false"  # the openai SDK would otherwise retry in vain
        raise err
