"""The process's file-descriptor budget: how many connections fit, and what to log when none do.

When accept() fails for want of descriptors, asyncio logs a traceback per attempt and retries
many times a second (300 unfinished connections against a limit of 256 wrote 7.6 MB of log in
10 s).
``AcceptErrorLog`` turns that into one line per interval that says what happened and how often.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ACCEPT_ERRNOS", "MAX_LINGERING", "AcceptErrorLog", "ThrottledLog", "accept_backlog",
           "default_max_connections"]

log = logging.getLogger("nanochat_gateway")

# What accept() reports when the process or the system is out of descriptors or buffers.
ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Descriptors kept free of connections: model files, logs, Redis, executor pipes, /proc reads.
FD_RESERVE_MIN = 64
FD_RESERVE_FRACTION = 8
# asyncio accepts up to `backlog` sockets per readiness event, one round per loop iteration, and a
# round's connections are counted against the cap two iterations later (connection_made is
# scheduled by the task that wraps the socket) and, when evicted, closed one iteration after
# that: three rounds can hold descriptors the cap does not see. Refused connections keep theirs
# for a moment too.
# All of that needs room beyond the cap, so a small descriptor limit gets a small backlog.
MAX_ACCEPT_BACKLOG = 128
MIN_ACCEPT_BACKLOG = 8
ACCEPT_ROUNDS = 3
MAX_LINGERING = 32
MIN_CONNECTIONS = 16
LOG_INTERVAL_S = 10.0


def _soft_fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def accept_backlog(soft: int | None = None) -> int:
    """The listen backlog: how many connections one accept round may take, scaled to the limit."""
    soft = _soft_fd_limit() if soft is None else soft
    return max(MIN_ACCEPT_BACKLOG, min(MAX_ACCEPT_BACKLOG, soft // 16))


def default_max_connections(soft: int | None = None, backlog: int | None = None) -> int:
    """The connection cap for ``max_connections = 0``: the soft descriptor limit less a reserve."""
    soft = _soft_fd_limit() if soft is None else soft
    backlog = accept_backlog(soft) if backlog is None else backlog
    reserve = max(FD_RESERVE_MIN, soft // FD_RESERVE_FRACTION) + ACCEPT_ROUNDS * backlog + MAX_LINGERING
    return max(MIN_CONNECTIONS, soft - reserve)


class ThrottledLog:
    """Logs a recurring event at most once per interval, with how often it happened since the last line."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger, self._interval_s, self._clock = logger, interval_s, clock
        self._count = 0
        self._last: float | None = None

    def event(self, level: int, message: str, *args: Any) -> bool:
        """Count one event; log ``message % args`` if the interval has passed. Returns whether it logged."""
        self._count += 1
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            return False
        self._logger.log(level, message + " [%d time(s) since the last such line]", *args, self._count)
        self._count, self._last = 0, now
        return True


class AcceptErrorLog:
    """An event-loop exception handler that logs accept() resource failures as throttled one-liners.

    Every other exception context goes to the handler that was installed before (or the default).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float = LOG_INTERVAL_S,
                 open_connections: Callable[[], int] | None = None) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._throttle = ThrottledLog(log, interval_s)
        self._open_connections = open_connections

    def install(self) -> None:
        self._loop.set_exception_handler(self)

    def uninstall(self) -> None:
        self._loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        about_accept = str(context.get("message", "")).startswith("socket.accept()")
        if about_accept and isinstance(exc, OSError) and exc.errno in ACCEPT_ERRNOS:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            connections = self._open_connections() if self._open_connections else -1
            self._throttle.event(
                logging.ERROR,
                "cannot accept new connections: %s (%s); open connections=%d, descriptor limit=%d. "
                "Raise the limit (ulimit -n) or lower [server] max_connections",
                os.strerror(exc.errno), errno.errorcode.get(exc.errno, "?"), connections, soft,
            )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
