"""The rate_limit plugin's algorithm and storage: GCRA over an in-memory or Redis backend.

See plugins/rate_limit.py for the semantics; this module holds the arithmetic, the memory
backend and the Redis backend with its Lua scripts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nanochat_gateway.config import ConfigError

PERIOD_US = 60_000_000  # every limit is per minute; time is in microseconds, as Redis TIME gives it
CONCURRENCY_RETRY_US = 1_000_000  # when a slot frees is unknowable; ask for a short wait


def format_duration(seconds: float) -> str:
    """A Go-style duration as OpenAI sends in x-ratelimit-reset-*: "0s", "120ms", "1.5s", "6m0s"."""
    ms = math.ceil(max(seconds, 0.0) * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return text + f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"


@dataclass(frozen=True, slots=True)
class Quota:
    """Where one limit of one identity stands, as the x-ratelimit-* headers report it."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(slots=True)
class Decision:
    """The outcome of one check; ``retry_after_s`` is None when retrying cannot help."""

    ok: bool
    limit: str | None = None  # what refused: "requests", "tokens" or "concurrency"
    retry_after_s: float | None = 0.0
    requests: Quota | None = None
    tokens: Quota | None = None


def gcra(tat: float, now: float, cost: int, limit: int) -> tuple[bool, float, float]:
    """One GCRA step: (admitted, TAT afterwards, microseconds until admissible; -1 = never)."""
    new = max(tat, now) + cost * PERIOD_US / limit
    if new - now <= PERIOD_US + 1:  # one microsecond of slack for float rounding
        return True, new, 0
    return False, max(tat, now), (math.ceil(new - now - PERIOD_US) if cost <= limit else -1)


def quota(tat: float, now: float, limit: int) -> tuple[int, int]:
    """(remaining units, microseconds until full) for a key whose TAT is ``tat``."""
    if limit <= 0:
        return -1, 0
    return math.floor((PERIOD_US - (tat - now)) * limit / PERIOD_US + 1e-6), math.ceil(tat - now)


@dataclass(frozen=True, slots=True)
class Limits:
    """The three per-identity limits; 0 turns one off."""

    requests_per_minute: int
    tokens_per_minute: int
    max_concurrent: int


def _quota(limit: int, remaining: int, reset_us: float) -> Quota | None:
    return Quota(limit, max(0, int(remaining)), reset_us / 1e6) if limit else None


class Backend:
    """Where limits live; each operation runs atomically against the backend's own clock."""

    errors: tuple[type[BaseException], ...] = ()  # what means "the backend did not answer"

    def __init__(self, limits: Limits):
        self.limits = limits

    async def start(self) -> None:
        """Open resources."""

    async def close(self) -> None:
        """Close what start opened."""

    async def admit(self, identity: str, member: str) -> Decision:
        """Check requests and concurrency together; take both only if both allow it."""
        raise NotImplementedError

    async def reserve(self, identity: str, cost: int) -> Decision:
        """Take ``cost`` tokens if the bucket holds them."""
        raise NotImplementedError

    async def refund(self, identity: str, amount: int) -> Quota | None:
        """Return ``amount`` unused tokens."""
        raise NotImplementedError

    async def release(self, identity: str, member: str) -> None:
        """Give back the concurrency slot admit took."""
        raise NotImplementedError


class MemoryBackend(Backend):
    """Limits kept in this process; no operation awaits, so concurrent tasks cannot interleave."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic):
        super().__init__(limits)
        self.clock = clock  # seconds; tests replace it to step time without sleeping
        self.tat: dict[tuple[str, str], float] = {}
        self.inflight: dict[str, int] = {}
        self._stores = 0

    def _now_us(self) -> float:
        return self.clock() * 1e6

    def _get(self, key: tuple[str, str], now: float) -> float:
        return max(self.tat.get(key, now), now)

    def _store(self, key: tuple[str, str], tat: float, now: float) -> None:
        if tat > now:
            self.tat[key] = tat
        else:
            self.tat.pop(key, None)  # a TAT in the past means "full", the same as no entry
        self._stores += 1
        if self._stores % 4096 == 0:  # forget idle clients so memory stays bounded
            self.tat = {k: v for k, v in self.tat.items() if v > now}

    async def admit(self, identity: str, member: str) -> Decision:
        now, (rpm, tpm, cmax) = self._now_us(), self._numbers()
        key = (identity, "requests")
        ok, tat, retry = gcra(self._get(key, now), now, 1, rpm) if rpm else (True, now, 0.0)
        refused = None if ok else "requests"
        if ok and cmax and self.inflight.get(identity, 0) >= cmax:
            refused, retry, tat = "concurrency", CONCURRENCY_RETRY_US, self._get(key, now)
        if refused is None:
            self._store(key, tat, now)
            if cmax:
                self.inflight[identity] = self.inflight.get(identity, 0) + 1
        return Decision(refused is None, refused, retry / 1e6, _quota(rpm, *quota(tat, now, rpm)),
                        _quota(tpm, *quota(self._get((identity, "tokens"), now), now, tpm)))

    async def reserve(self, identity: str, cost: int) -> Decision:
        now, tpm = self._now_us(), self.limits.tokens_per_minute
        ok, tat, retry = gcra(self._get((identity, "tokens"), now), now, cost, tpm)
        if ok:
            self._store((identity, "tokens"), tat, now)
        return Decision(ok, None if ok else "tokens", None if retry < 0 else retry / 1e6,
                        tokens=_quota(tpm, *quota(tat, now, tpm)))

    async def refund(self, identity: str, amount: int) -> Quota | None:
        now, tpm = self._now_us(), self.limits.tokens_per_minute
        tat = max(self._get((identity, "tokens"), now) - amount * PERIOD_US / tpm, now)
        self._store((identity, "tokens"), tat, now)
        return _quota(tpm, *quota(tat, now, tpm))

    async def release(self, identity: str, member: str) -> None:
        left = self.inflight.pop(identity, 0) - 1
        if left > 0:
            self.inflight[identity] = left

    def _numbers(self) -> tuple[int, int, int]:
        limits = self.limits
        return limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent


# The same functions in Lua, on Redis's own clock (TIME), so every replica computes alike.
# Every script gets KEYS = requests, concurrency (sorted set of leases), tokens and
# ARGV = rpm, max_concurrent, tpm, lease (us), then the operation's argument.
_LUA_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local P = 60000000
local rpm, cmax, tpm, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function tat_of(key)
  local v = redis.call('GET', key)
  return math.max(v and tonumber(v) or now, now)
end
local function quota(tat, limit)
  if limit <= 0 then return -1, 0 end
  return math.floor((P - (tat - now)) * limit / P + 1e-6), math.ceil(tat - now)
end
local function gcra(tat, cost, limit)
  local new = tat + cost * P / limit
  if new - now <= P + 1 then return true, new, 0 end
  if cost > limit then return false, tat, -1 end
  return false, tat, math.ceil(new - now - P)
end
local function store(key, tat)
  if tat <= now then return redis.call('DEL', key) end
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
"""
_LUA = {
    "admit": _LUA_PRELUDE + """
local status, retry, rtat, ok = 0, 0, now, true
if rpm > 0 then ok, rtat, retry = gcra(tat_of(KEYS[1]), 1, rpm) end
if not ok then status = 1 end
if cmax > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if ok and redis.call('ZCARD', KEYS[2]) >= cmax then status, retry, rtat = 2, 1000000, tat_of(KEYS[1]) end
end
if status == 0 then
  store(KEYS[1], rtat)
  if cmax > 0 then
    redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
    redis.call('PEXPIRE', KEYS[2], math.ceil(lease / 1000))
  end
end
local rrem, rreset = quota(rtat, rpm)
local trem, treset = quota(tat_of(KEYS[3]), tpm)
return {status, retry, rrem, rreset, trem, treset}
""",
    "reserve": _LUA_PRELUDE + """
local ok, tat, retry = gcra(tat_of(KEYS[3]), tonumber(ARGV[5]), tpm)
if ok then store(KEYS[3], tat) end
local rem, reset = quota(tat, tpm)
return {ok and 0 or 1, retry, rem, reset}
""",
    "refund": _LUA_PRELUDE + """
local tat = math.max(tat_of(KEYS[3]) - tonumber(ARGV[5]) * P / tpm, now)
store(KEYS[3], tat)
local rem, reset = quota(tat, tpm)
return {rem, reset}
""",
    "release": "redis.call('ZREM', KEYS[2], ARGV[5]) return {}",
}


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Where the shared limits live and how long to wait for them."""

    url: str
    timeout_s: float
    key_prefix: str


class RedisBackend(Backend):
    """Limits shared through Redis; every check-and-update is one atomic Lua script."""

    def __init__(self, limits: Limits, redis: RedisOptions, lease_s: float):
        super().__init__(limits)
        try:
            from redis.asyncio.connection import parse_url  # optional dependency: imported only here
        except ImportError:
            raise ConfigError("[plugins.rate_limit] backend = \"redis\" needs the redis package: "
                              "pip install 'nanochat-gateway[redis]'") from None
        try:
            parse_url(redis.url)
        except ValueError as exc:  # the URL may hold a password: show only the reason
            raise ConfigError(f"[plugins.rate_limit] redis_url: {exc}") from None
        self.redis, self.lease_us = redis, int(lease_s * 1_000_000)
        self.client: Any = None

    async def start(self) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options = self.redis
        # No retries: a retried script could apply twice, and an outage must fail fast.
        self.client = redis.asyncio.Redis.from_url(
            options.url, socket_timeout=options.timeout_s, socket_connect_timeout=options.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.scripts = {op: self.client.register_script(lua) for op, lua in _LUA.items()}
        self.errors = (redis.RedisError, OSError, asyncio.TimeoutError)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def _run(self, op: str, identity: str, arg: int | str) -> list[int]:
        # The {hash tag} keeps one identity's keys in one Redis Cluster slot, as scripts require.
        tag = "{" + identity.replace("{", "(").replace("}", ")") + "}"
        keys = [f"{self.redis.key_prefix}{tag}:{kind}" for kind in ("req", "conc", "tok")]
        limits = self.limits
        args = [limits.requests_per_minute, limits.max_concurrent, limits.tokens_per_minute, self.lease_us, arg]
        return [int(x) for x in await self.scripts[op](keys=keys, args=args)]

    async def admit(self, identity: str, member: str) -> Decision:
        status, retry, rrem, rreset, trem, treset = await self._run("admit", identity, member)
        limits = self.limits
        return Decision(status == 0, {0: None, 1: "requests", 2: "concurrency"}[status], retry / 1e6,
                        _quota(limits.requests_per_minute, rrem, rreset),
                        _quota(limits.tokens_per_minute, trem, treset))

    async def reserve(self, identity: str, cost: int) -> Decision:
        status, retry, rem, reset = await self._run("reserve", identity, cost)
        return Decision(status == 0, "tokens" if status else None, None if retry < 0 else retry / 1e6,
                        tokens=_quota(self.limits.tokens_per_minute, rem, reset))

    async def refund(self, identity: str, amount: int) -> Quota | None:
        rem, reset = await self._run("refund", identity, amount)
        return _quota(self.limits.tokens_per_minute, rem, reset)

    async def release(self, identity: str, member: str) -> None:
        await self._run("release", identity, member)
