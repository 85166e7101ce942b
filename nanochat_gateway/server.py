"""Run the app on a TCP port with a graceful SIGTERM/SIGINT drain.

On the first signal /ready turns 503 and new generation requests get 503 (the port stays
open so probes and load balancers get an answer), in-flight generations may finish for up
to [server] shutdown_grace_s, and whatever still runs then ends with an OpenAI-shaped error
event (a 503 for non-streaming requests). Then the plugins and executors stop and serve()
returns, so the process exits 0. A second signal cuts the grace period short.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from nanochat_gateway.app import make_runner
from nanochat_gateway.resources import AcceptErrorLog
from nanochat_gateway.state import STATE

log = logging.getLogger("nanochat_gateway")

POLL_S = 0.05
# Aborted generations only need to write one error event and [DONE].
ABORT_WAIT_S = 5.0
# What aiohttp gives handlers still running after the drain (none should be left).
CLOSE_TIMEOUT_S = 5.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def drain(app: web.Application, grace_s: float, *, hurry: asyncio.Event | None = None) -> int:
    """Stop taking work, let in-flight generations finish, abort what is left; return how many were aborted."""
    state = app[STATE]
    state.draining = True
    state.phase = "draining"
    start = time.monotonic()
    log.info("phase=drain in_flight=%d grace_s=%.1f", len(state.active_generations), grace_s)
    deadline = start + grace_s
    while state.active_generations and time.monotonic() < deadline and not (hurry and hurry.is_set()):
        await asyncio.sleep(POLL_S)
    aborted = len(state.active_generations)
    if aborted:
        reason = "second_signal" if hurry and hurry.is_set() else "grace_period_over"
        log.warning("phase=drain aborting=%d reason=%s", aborted, reason)
        for run in list(state.active_generations):
            run.abort_for_shutdown()
        until = time.monotonic() + ABORT_WAIT_S
        while state.active_generations and time.monotonic() < until:
            await asyncio.sleep(POLL_S)
    log.info("phase=drain aborted=%d seconds=%.2f", aborted, time.monotonic() - start)
    return aborted


async def serve(app: web.Application, host: str, port: int, *, grace_s: float,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then drain and clean up.

    Raises OSError when the port cannot be bound; the app is cleaned up either way.
    """
    stop = stop or asyncio.Event()
    hurry = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        if stop.is_set():
            log.warning("phase=drain signal=%s: ending in-flight generations now", sig.name)
            hurry.set()
        stop.set()

    runner = make_runner(app, shutdown_timeout_s=CLOSE_TIMEOUT_S)
    # setup() starts the background model bring-up; the port opens right after, not after loading.
    await runner.setup()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    accept_errors = AcceptErrorLog(loop, open_connections=lambda: runner.open_connections)
    accept_errors.install()
    stopped_at: float | None = None
    try:
        limits = runner.limits
        await web.TCPSite(runner, host, port, backlog=limits.listen_backlog).start()
        log.info("phase=listen url=http://%s:%d max_connections=%d listen_backlog=%d head_timeout_s=%g "
                 "body_timeout_s=%g keepalive_timeout_s=%g", host, port, limits.max_connections,
                 limits.listen_backlog, limits.head_timeout_s,
                 limits.body_timeout_s, limits.keepalive_timeout_s)
        await stop.wait()
        stopped_at = time.monotonic()
        log.info("phase=shutdown signal=%s grace_s=%.1f", received[0] if received else "none", grace_s)
        await drain(app, grace_s, hurry=hurry)
    finally:
        # Handlers stay until cleanup ends: a second signal must not kill the process mid-drain.
        await runner.cleanup()
        accept_errors.uninstall()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        if stopped_at is not None:
            log.info("phase=stopped seconds=%.2f", time.monotonic() - stopped_at)
