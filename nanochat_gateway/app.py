"""create_app: the aiohttp application with routes, plugins, executors and lifecycle.

Start-up never blocks the port: the model is resolved (downloaded or generated) in a
background task and loaded by each executor thread, while /health answers at once and
/ready says what is still happening.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import ParamSpec, TypeVar

import torch
from aiohttp import web
from prometheus_client import CollectorRegistry

from nanochat_gateway.api import routes, ui
from nanochat_gateway.api.connections import ConnectionLimits, GatewayRunner
from nanochat_gateway.api.middleware import request_context
from nanochat_gateway.config import Settings
from nanochat_gateway.engine.executor import DeviceExecutor
from nanochat_gateway.engine.options import ExecutorOptions
from nanochat_gateway.engine.router import Router
from nanochat_gateway.model.device import resolve_devices
from nanochat_gateway.model.loader import LoadedModel, load_model
from nanochat_gateway.model.sources import ResolvedSource, resolve_source
from nanochat_gateway.plugins import RESPONSE_HEADERS, Plugin, PluginContext, load_plugins
from nanochat_gateway.state import STATE, GatewayState

log = logging.getLogger("nanochat_gateway")




def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> web.Application:
    """Build the gateway application from validated settings."""
    state = GatewayState(settings=settings, registry=registry or CollectorRegistry(auto_describe=True))
    app = web.Application(client_max_size=settings.server.client_max_size, middlewares=[request_context])
    app[STATE] = state
    context = PluginContext(app=app, settings=settings, registry=state.registry)
    state.plugins = load_plugins(settings.plugins, context)
    for plugin in state.plugins:
        if plugin.has_middleware:
            app.middlewares.append(web.middleware(plugin.middleware))
    app.on_response_prepare.append(_apply_response_headers)
    routes.add_routes(app)
    if settings.ui.enabled:
        context.public_paths |= ui.add_routes(app)
    for plugin in state.plugins:
        app.router.add_routes(list(plugin.routes()))
    app.cleanup_ctx.append(_engine_lifecycle)
    app.cleanup_ctx.append(_plugin_lifecycle)
    return app


def make_runner(app: web.Application, *, shutdown_timeout_s: float) -> GatewayRunner:
    """The runner that serves ``app``: [server] connection limits, handlers cancelled when their client leaves."""
    limits = ConnectionLimits.from_settings(app[STATE].settings.server)
    return GatewayRunner(app, limits, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout_s)


async def _apply_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    if extra := request.get(RESPONSE_HEADERS):
        response.headers.update(extra)


P = ParamSpec("P")
R = TypeVar("R")


async def _plugin_lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    started: list[Plugin] = []
    try:
        for plugin in state.plugins:
            await plugin.startup()
            started.append(plugin)
        yield
    finally:
        for plugin in reversed(started):
            try:
                await plugin.cleanup()
            except Exception:
                log.exception("plugin %s failed during cleanup", plugin.name)


async def _engine_lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.bring_up = asyncio.create_task(_bring_up(state))
    yield
    state.bring_up.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await state.bring_up
    if state.router is not None:
        await asyncio.to_thread(state.router.stop)
    if state.grammars is not None:
        state.grammars.close()


async def _bring_up(state: GatewayState) -> None:
    """Resolve the model source, then start one executor per device (each loads in its thread)."""
    settings = state.settings
    m = settings.model
    try:
        state.phase = "resolving model"
        state.resolved = resolved = await _in_daemon_thread(
            resolve_source, m.source, model_id=m.id, demo_dir=m.demo_dir, kind=m.checkpoint_kind,
            tag=m.tag or None, step=m.step,
        )
        log.info("phase=resolve source=%s path=%s seconds=%.2f", resolved.source or "default",
                 resolved.local_path, resolved.seconds)
        state.phase = "loading model"
        devices = resolve_devices(settings.engine.devices)
        loader = SharedLoader(resolved, settings)
        e = settings.engine
        cpu_count = sum(d.type == "cpu" for d in devices)
        options = ExecutorOptions(
            max_batch_size=e.max_batch_size, max_seq_len=e.max_seq_len,
            prefill_chunk_tokens=e.prefill_chunk_tokens, max_queue=e.max_queue,
            cpu_threads=e.cpu_threads or _cpu_threads_per_executor(cpu_count),
            admit_window_ms=e.admit_window_ms, kv_cache_memory_fraction=e.kv_cache_memory_fraction,
            calculator=m.calculator, prefix_cache=e.prefix_cache, prefix_cache_min_tokens=e.prefix_cache_min_tokens,
        )
        executors = [DeviceExecutor(_executor_name(d, i), d, loader.load, options) for i, d in enumerate(devices)]
        state.router = Router(executors)
        if state.plugins:  # every plugin shares one PluginContext
            state.plugins[0].context.router = state.router
        state.router.start(asyncio.get_running_loop())
        while not all(ex.ready.is_set() for ex in executors):
            await asyncio.sleep(0.02)
        if state.router.failures:
            state.phase, state.failure = "failed", "; ".join(state.router.failures)
            log.error("phase=load failed: %s", state.failure)
            return
        for plugin in state.plugins:
            try:
                await plugin.on_engine_ready(state.router)
            except Exception:  # a plugin's failure must not keep the model from serving
                log.exception("plugin %s failed in on_engine_ready", plugin.name)
        state.phase = "ready"
        loaded = state.model
        assert loaded is not None  # every executor is ready
        log.info("phase=ready model=%s generation=%s dtype=%s executors=%d seconds=%.2f%s", state.model_id,
                 loaded.architecture, loaded.precision, len(executors),
                 time.time() - state.started_at,
                 " DEMO MODEL WITH RANDOM WEIGHTS" if (loaded.is_demo or resolved.is_demo) else "")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("start-up failed")
        state.phase, state.failure = "failed", str(exc)


async def _in_daemon_thread(func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """asyncio.to_thread in a daemon thread: asyncio.run waits for to_thread work at exit, so a
    SIGTERM during a long download would otherwise keep the process alive until the download ends."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # done: cancelled by shutdown, nobody wants the result any more
            outcome()

    def run() -> None:
        outcome: Callable[[], None]
        try:
            outcome = functools.partial(future.set_result, func(*args, **kwargs))
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is exiting
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="resolve-model", daemon=True).start()
    return await future


def _executor_name(device: torch.device, index: int) -> str:
    return f"{device.type}{device.index if device.index is not None else index}"


def _cpu_threads_per_executor(cpu_executors: int) -> int:
    # Split the cores between CPU executors: oversubscribed OpenMP pools slow everyone down.
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, cpu_executors)) if cpu_executors else 0


class SharedLoader:
    """Loads the model once per device; CPU executors share one read-only copy."""

    def __init__(self, resolved: ResolvedSource, settings: Settings):
        self.resolved, self.settings = resolved, settings
        self._cache: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def load(self, device: torch.device) -> LoadedModel:
        key = "cpu" if device.type == "cpu" else str(device)
        with self._lock:
            if key not in self._cache:
                m, e = self.settings.model, self.settings.engine
                start = time.monotonic()
                loaded = load_model(
                    self.resolved.local_path, device=device, dtype=m.dtype, architecture=m.generation,
                    softcap=m.softcap, checkpoint_kind=m.checkpoint_kind, tag=m.tag or None, step=m.step,
                    rotary_len=e.max_seq_len or None, quantize=m.quantize,
                )
                loaded.source = self.resolved.source
                loaded.is_demo = loaded.is_demo or self.resolved.is_demo
                log.info("phase=load device=%s seconds=%.2f", device, time.monotonic() - start)
                self._cache[key] = loaded
            return self._cache[key]
