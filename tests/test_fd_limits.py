"""A gateway process with 200 file descriptors against 300 connections that never finish a request.

With the connection cap derived from the descriptor limit, normal requests keep being answered;
with a cap set above what the process can open, accept() fails, and the log gets one line per
interval instead of a traceback per attempt.
"""

from __future__ import annotations

import re
import socket
import sys
import time

import test_lifecycle
from test_lifecycle import base_env, call
from test_rate_limit_redis import free_port

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
    """Connections that each send half a request head and then nothing."""
    held = []
    for _ in range(UNFINISHED):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        held.append(sock)
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
    gateway = start(spawn, tmp_path, tiny_model_dir, server__max_connections="1000")
    size_before = gateway.log_path.stat().st_size
    held = open_unfinished(gateway.port)
    try:
        time.sleep(3)  # asyncio retries accept() thousands of times in this while
    finally:
        for sock in held:
            sock.close()
    log = gateway.log()
    lines = [line for line in log.splitlines() if "cannot accept new connections" in line]
    assert len(lines) == 1, log[-3000:]
    assert "Too many open files (EMFILE)" in lines[0] and f"descriptor limit={FD_LIMIT}" in lines[0]
    assert "Traceback" not in log
    assert gateway.log_path.stat().st_size - size_before < 2000
