"""Serving benchmark: the real server in its own process, driven over loopback by N
concurrent streaming clients speaking the OpenAI chat API (as vLLM's serving benchmark
does, with aiohttp and SSE parsing; the client stays light so it does not steal the
server's CPU). Reports output tokens/s, requests/s, TTFT and inter-token latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from nanochat_gateway.bench.prompts import synthetic_prompt
from nanochat_gateway.bench.report import percentile


@dataclass
class RequestTiming:
    start: float
    first_token: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    end: float = 0.0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when reported
    text: str = ""  # the reply, for a client that sends it back in the next turn
    ok: bool = False
    error: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def peak_rss_bytes(pid: int) -> int | None:
    """A process's peak resident memory (VmHWM), or None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@asynccontextmanager
async def running_server(model: str, *, dtype: str, max_batch_size: int, threads: int,
                         extra_env: dict[str, str] | None = None, startup_timeout: float = 300.0,
                         stats: dict[str, Any] | None = None) -> AsyncIterator[tuple[str, str]]:
    """Start `nanochat-gateway serve` in a subprocess; yield its base URL; stop it.

    stats, when given, receives the server's peak_rss_bytes just before it is stopped.
    """
    port = free_port()
    env = dict(os.environ)
    env.update({
        "NANOCHAT_GATEWAY__MODEL__DTYPE": dtype,
        "NANOCHAT_GATEWAY__ENGINE__MAX_BATCH_SIZE": str(max_batch_size),
        "NANOCHAT_GATEWAY__ENGINE__CPU_THREADS": str(threads),
        "NANOCHAT_GATEWAY__LOGGING__LEVEL": "warning",
    })
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "nanochat_gateway", "serve", "--model", model, "--host", "127.0.0.1",
           "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None:
                    log = proc.stderr.read() if proc.stderr is not None else b""
                    raise RuntimeError(f"server exited: {log.decode(errors='replace')[-2000:]}")
                try:
                    async with session.get(f"{url}/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not become ready in time")
                await asyncio.sleep(0.2)
            async with session.get(f"{url}/v1/models") as r:
                model_id = (await r.json())["data"][0]["id"]
        yield url, model_id
    finally:
        if stats is not None:
            stats["peak_rss_bytes"] = peak_rss_bytes(proc.pid)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _one_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> RequestTiming:
    timing = RequestTiming(start=time.perf_counter())
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            if response.status != 200:
                timing.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return timing
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    timing.ok = True
                    break
                event = json.loads(data)
                if "error" in event:
                    timing.error = event["error"].get("message")
                    break
                now = time.perf_counter()
                if usage := event.get("usage"):
                    timing.completion_tokens, timing.prompt_tokens = usage["completion_tokens"], usage["prompt_tokens"]
                    timing.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                for choice in event.get("choices", []):
                    if content := choice.get("delta", {}).get("content"):
                        timing.text += content
                        timing.chunk_times.append(now)
                        if timing.first_token is None:
                            timing.first_token = now
    except aiohttp.ClientError as exc:
        timing.error = str(exc)
    timing.end = time.perf_counter()
    return timing


async def drive(url: str, model_id: str, *, requests: int, concurrency: int, prompt_words: int,
                max_tokens: int, ignore_ids: list[int], seed: int = 0) -> dict[str, Any]:
    """Send `requests` streaming chat requests, at most `concurrency` at a time."""
    semaphore = asyncio.Semaphore(concurrency)
    bias = {str(t): -100 for t in ignore_ids}  # keep every stream to exactly max_tokens

    async def worker(i: int, session: aiohttp.ClientSession) -> RequestTiming:
        body = {"model": model_id, "messages": [{"role": "user", "content": synthetic_prompt(prompt_words, seed + i)}],
                "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "logit_bias": bias}
        async with semaphore:
            return await _one_request(session, url, body)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        start = time.perf_counter()
        timings = await asyncio.gather(*(worker(i, session) for i in range(requests)))
        wall = time.perf_counter() - start
    return summarize(timings, wall, concurrency)


def summarize(timings: list[RequestTiming], wall: float, concurrency: int) -> dict[str, Any]:
    ok = [t for t in timings if t.ok]
    ttft = [t.first_token - t.start for t in ok if t.first_token is not None]
    itl = [b - a for t in ok for a, b in zip(t.chunk_times, t.chunk_times[1:], strict=False)]
    tokens = sum(t.completion_tokens for t in ok)
    return {
        "concurrency": concurrency, "requests": len(timings), "completed": len(ok),
        "errors": sorted({t.error for t in timings if t.error})[:5],
        "wall_s": wall, "output_tokens": tokens, "output_tokens_per_s": tokens / wall if wall else 0.0,
        "requests_per_s": len(ok) / wall if wall else 0.0,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
        "itl_p50_s": percentile(itl, 50), "itl_p95_s": percentile(itl, 95),
    }
