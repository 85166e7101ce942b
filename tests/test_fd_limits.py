"""A gateway process with 200 file descriptors against 300 connections that never finish a request.

With the connection cap derived from the descriptor limit, normal requests keep being answered;
with a cap set above what the process can open, accept() fails, and the log gets one line per
interval instead of a traceback per attempt.
"""

from __future__ import annotations

import re
import select
import socket
import sys
import time

import test_lifecycle
from test_lifecycle import base_env, call
from test_rate_limit_redis import free_port

from nanochat_gateway.resources import FD_RESERVE_MIN, MAX_LINGERING, accept_backlog, default_max_connections

spawn = test_lifecycle.spawn  # child processes killed whatever happens

FD_LIMIT = 200
UNFINISHED = 300
# `serve` with the soft and hard descriptor limit lowered first, as `ulimit -n 200` would.
LAUNCH = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT})); "
          "from nanochat_gateway.cli import main; sys.exit(main(sys.argv[1:]))")


def start(spawn, tmp_path, tiny_model_dir, **settings: str):
    port = free_port()
    env = base_env(tmp_path, model__source=str(tiny_model_dir), model__dtype="float32", plugins__enabled="[]",
                   server__port=str(port), server__head_timeout_s="30", **settings)
    gateway = spawn([sys.executable, "-c", LAUNCH, "serve"], env=env, port=port)
    gateway.wait_ready()
    return gateway


def open_unfinished(port: int) -> list[socket.socket]:
    """Connections that each send half a request head and then nothing.

    The connects are non-blocking: a process out of descriptors stops accepting, its small listen
    backlog fills, and the kernel retries the rest of the handshakes while the test goes on.
    """
    held = []
    for _ in range(UNFINISHED):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        held.append(sock)
    pending, deadline = list(held), time.monotonic() + 5
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], 0.2)
        for sock in writable:
            pending.remove(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                sock.send(b"GET /health HTTP/1.1\r\nHost: test\r\n")
    return held


def test_normal_requests_are_served_while_unfinished_ones_exceed_the_fd_limit(spawn, tmp_path, tiny_model_dir):
    gateway = start(spawn, tmp_path, tiny_model_dir)
    held = open_unfinished(gateway.port)
    try:
        time.sleep(0.5)
        statuses = [call(gateway.port, "GET", "/health", timeout=5)[0] for _ in range(20)]
    finally:
        for sock in held:
            sock.close()
    assert statuses == [200] * 20
    log = gateway.log()
    assert "Traceback" not in log and "Too many open files" not in log
    cap = int(re.search(r"max_connections=(\d+)", log)[1])
    assert cap < FD_LIMIT // 2, "the cap leaves room for accept bursts and the process's own files"


def test_running_out_of_descriptors_logs_one_line_per_interval(spawn, tmp_path, tiny_model_dir):
    # A cap and a backlog set above what the process can open.
    gateway = start(spawn, tmp_path, tiny_model_dir, server__max_connections="1000", server__listen_backlog="128")
    size_before = gateway.log_path.stat().st_size
    held = open_unfinished(gateway.port)
    try:
        time.sleep(3)  # asyncio retries accept() once a second meanwhile
    finally:
        for sock in held:
            sock.close()
    log = gateway.log()
    lines = [line for line in log.splitlines() if "cannot accept new connections" in line]
    assert len(lines) == 1, log[-3000:]
    assert "Too many open files (EMFILE)" in lines[0] and f"descriptor limit={FD_LIMIT}" in lines[0]
    assert "Traceback" not in log
    assert gateway.log_path.stat().st_size - size_before < 2000


def test_the_derived_cap_leaves_room_for_three_accept_rounds_at_every_limit():
    """asyncio can hold three rounds of accepted sockets the cap has not counted yet (see resources.py)."""
    for soft in (200, 256, 512, 1024, 4096, 65536, 1 << 20):
        cap, backlog = default_max_connections(soft), accept_backlog(soft)
        assert 8 <= backlog <= 128
        assert cap + 3 * backlog + MAX_LINGERING + FD_RESERVE_MIN <= soft, soft
    assert default_max_connections(1024) > 600, "a common limit still serves hundreds of clients"
