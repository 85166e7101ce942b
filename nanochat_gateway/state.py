"""GatewayState: what request handlers and plugins share, hung off the aiohttp app."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from nanochat_gateway.config import Settings
from nanochat_gateway.engine.grammar import GrammarCompiler
from nanochat_gateway.engine.router import Router
from nanochat_gateway.model.loader import LoadedModel
from nanochat_gateway.model.sources import ResolvedSource
from nanochat_gateway.plugins import Plugin

Phase = Literal["starting", "resolving model", "loading model", "ready", "failed", "draining"]


class InFlightRun(Protocol):
    """A generation request a graceful shutdown waits for (api.generation.GenerationRun)."""

    def abort_for_shutdown(self) -> None: ...


@dataclass
class GatewayState:
    """Everything a request handler may need, hung off the app (no globals)."""

    settings: Settings
    registry: CollectorRegistry
    plugins: list[Plugin] = field(default_factory=list)
    router: Router | None = None
    resolved: ResolvedSource | None = None
    phase: Phase = "starting"
    failure: str | None = None
    draining: bool = False
    started_at: float = field(default_factory=time.time)
    active_generations: set[InFlightRun] = field(default_factory=set)
    bring_up: asyncio.Task[None] | None = None  # resolving and loading the model, in the background
    grammars: GrammarCompiler | None = None  # compiles structured-output schemas; made by the first one

    @property
    def model(self) -> LoadedModel | None:
        if self.router is None:
            return None
        for executor in self.router.executors:
            if executor.status == "ready":
                return executor.loaded
        return None

    @property
    def model_id(self) -> str | None:
        return self.resolved.model_id if self.resolved else (self.settings.model.id or None)

    @property
    def is_ready(self) -> bool:
        # phase "ready" comes after the plugins' on_engine_ready hooks, so they see no request before
        return self.phase == "ready" and not self.draining and self.router is not None and self.router.is_ready

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /ready."""
        if self.draining:
            return False, "shutting down"
        if self.failure:
            return False, f"failed: {self.failure}"
        if self.router is not None:
            if self.router.failures:
                return False, "failed: " + "; ".join(self.router.failures)
            if self.router.is_ready and self.phase == "ready":
                return True, "ready"
            return False, "loading model"
        return False, self.phase


STATE = web.AppKey("nanochat_gateway.state", GatewayState)
