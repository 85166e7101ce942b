"""Run the app on a TCP port with a graceful SIGTERM/SIGINT drain.

On a signal: /ready turns 503 and new generation requests get 503, in-flight ones may
finish for up to [server] shutdown_grace_s, the rest end with an error event, then the
executors stop and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from nanochat_gateway.api import errors
from nanochat_gateway.state import STATE

log = logging.getLogger("nanochat_gateway")


async def drain(app: web.Application, grace_s: float) -> None:
    """Stop taking work, wait for in-flight generations, then abort what is left."""
    state = app[STATE]
    state.draining = True
    state.phase = "draining"
    deadline = time.monotonic() + grace_s
    if state.active_generations:
        log.info("phase=drain in_flight=%d grace_s=%.1f", len(state.active_generations), grace_s)
    while state.active_generations and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.active_generations:
        log.warning("phase=drain aborting %d generations still running", len(state.active_generations))
        for run in list(state.active_generations):
            run.abort(errors.unavailable("The server is shutting down", code="shutting_down"))
        until = time.monotonic() + 5.0
        while state.active_generations and time.monotonic() < until:
            await asyncio.sleep(0.05)


async def serve(app: web.Application, host: str, port: int, *, grace_s: float,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then drain and clean up."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=grace_s + 5)
    await site.start()
    log.info("phase=listen url=http://%s:%d", host, port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("phase=shutdown signal received")
        await drain(app, grace_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("phase=stopped")
