"""Router: spread requests over device executors, least-loaded first."""

from __future__ import annotations

import asyncio

from nanochat_gateway.engine.executor import DeviceExecutor
from nanochat_gateway.engine.request import EngineError, GenerationRequest
from nanochat_gateway.engine.stream import RequestStream


class Router:
    def __init__(self, executors: list[DeviceExecutor]):
        if not executors:
            raise ValueError("a router needs at least one executor")
        self.executors = executors

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for executor in self.executors:
            executor.start(loop)

    def stop(self, timeout: float = 10.0) -> None:
        for executor in self.executors:
            executor.stop(timeout)

    @property
    def is_ready(self) -> bool:
        return all(e.status == "ready" for e in self.executors)

    @property
    def failures(self) -> list[str]:
        return [f"{e.name}: {e.failure}" for e in self.executors if e.status == "failed"]

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Send to the ready executor holding the fewest requests (waiting + running)."""
        ready = [e for e in self.executors if e.status == "ready"]
        if not ready:
            raise EngineError("unavailable", "no executor is ready")
        # min() keeps list order on ties, so an idle server fills executors in order.
        return min(ready, key=lambda e: e.held_requests).submit(request)

    @property
    def running(self) -> int:
        return sum(e.running for e in self.executors)

    @property
    def waiting(self) -> int:
        return sum(e.waiting for e in self.executors)
