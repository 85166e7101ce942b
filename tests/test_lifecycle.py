"""The gateway as a real process: start-up phases, SIGTERM drains, restarts from the HF cache, shared limits.

Every test starts `nanochat-gateway serve` (or the README's `make serve`) as a child process in
its own session on a free loopback port, with XDG_CACHE_HOME and HF_HOME in tmp_path and
HF_HUB_OFFLINE=1, and kills the whole process group when it ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import test_rate_limit_redis
from test_hub import commit_hash, make_hf_cache
from test_rate_limit_redis import free_port

from nanochat_gateway.config import ENV_PREFIX
from nanochat_gateway.model.sources import DEMO_MODEL_ID
from nanochat_gateway.model.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0  # a cold `make serve` generates the demo model first
EXIT_TIMEOUT_S = 20.0
# Variables of the outer environment that would change what a test process does.
FOREIGN_ENV = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "HF_TOKEN", "HF_HUB_CACHE", "HF_ENDPOINT",
               "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS")
KEY = "ncg-lifecycle-test-key-0123456789"
DIGEST = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
ALICE = {"Authorization": f"Bearer {KEY}"}

redis_server = test_rate_limit_redis.redis_server  # the same throwaway redis-server per test


# --- processes ----------------------------------------------------------------------------------


class Gateway:
    """One child process (its own session, so its whole group can be killed) and its log file."""

    def __init__(self, args: list[str], *, env: dict[str, str], port: int, log_path: Path, cwd: Path = REPO):
        self.port, self.log_path = port, log_path
        self._log_file = log_path.open("wb")
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def fail(self, message: str) -> NoReturn:
        pytest.fail(f"{message}\n--- log of {self.popen.args} ---\n{self.log()[-6000:]}")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                self.fail(f"the gateway exited with {self.popen.returncode} before it was ready")
            try:
                status, _, body = call(self.port, "GET", "/ready", timeout=2)
            except OSError:
                status, body = None, None
            if status == 200:
                return
            if isinstance(body, dict) and str(body.get("reason", "")).startswith("failed"):
                self.fail(f"start-up failed: {body}")
            if time.monotonic() > deadline:
                self.fail(f"not ready after {timeout:.0f} s (last /ready: {status} {body})")
            time.sleep(0.05)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"still running {timeout:.0f} s after it was asked to stop")

    def kill(self) -> None:
        # The whole group, even when its leader is gone: make's child may outlive make.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self._log_file.close()


@pytest.fixture
def spawn(tmp_path) -> Iterator:
    """spawn(args, env=..., port=...) -> Gateway; every process group is killed at the end."""
    started: list[Gateway] = []

    def start(args: list[str], *, env: dict[str, str], port: int, cwd: Path = REPO) -> Gateway:
        gateway = Gateway(args, env=env, port=port, log_path=tmp_path / f"gateway-{len(started)}.log", cwd=cwd)
        started.append(gateway)
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            gateway.kill()


def base_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The outer environment without gateway settings, caches in tmp_path, offline, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX) and k not in FOREIGN_ENV}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    env.update({ENV_PREFIX + name.upper(): value for name, value in settings.items()})
    return env


def serve_args(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nanochat_gateway", "serve", "--port", str(port), *extra]


# --- HTTP ----------------------------------------------------------------------------------------


def call(port: int, method: str, path: str, body: Any = None, headers: dict | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str], Any]:
    """One request on a fresh connection: (status, headers, JSON body or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read().decode()
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = raw
        return response.status, dict(response.headers), payload
    finally:
        conn.close()


class EventStream:
    """A streaming POST whose SSE data payloads are read one at a time."""

    def __init__(self, port: int, path: str, body: dict, headers: dict | None = None, timeout: float = 30):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("POST", path, body=json.dumps({**body, "stream": True}),
                          headers={"Content-Type": "application/json", **(headers or {})})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        self.events: list[str] = []

    def next(self) -> str | None:
        """The next data payload ("[DONE]" included), or None at the end of the stream."""
        while line := self.response.readline():
            line = line.rstrip(b"\r\n")
            if line.startswith(b"data:"):
                self.events.append(line[5:].strip().decode())
                return self.events[-1]
        return None

    def rest(self) -> list[str]:
        while self.next() is not None:
            pass
        self.conn.close()
        return self.events


def chat(model: str, max_tokens: int, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "temperature": 0, **extra}


def endless(model_dir: Path) -> dict:
    """logit_bias that keeps a demo model from ever choosing a token that ends the answer."""
    tokenizer = load_tokenizer(model_dir / "tokenizer.pkl")
    return {"logit_bias": {str(tokenizer.assistant_end): -100, str(tokenizer.bos_id): -100}}


def phases(log: str) -> list[dict[str, str]]:
    """The key=value pairs of every `phase=...` line, in order."""
    return [dict(re.findall(r"(\w+)=(\S+)", m.group(0))) for m in re.finditer(r"phase=[^\n\"]*", log)]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


# --- the README's serve command ------------------------------------------------------------------


def test_readme_make_serve_then_sigterm(spawn, tmp_path):
    """`make serve` as the README says: demo model offline, /v1/models and a chat work, SIGTERM exits 0.

    The signal goes to the gateway, make's child: GNU make that is itself signalled re-raises the
    signal and dies by it, which would hide the gateway's exit code (make passes it through).
    """
    assert "make serve" in (REPO / "README.md").read_text(encoding="utf-8")
    if shutil.which("make") is None:
        pytest.fail("make is not installed") if os.environ.get("CI") else pytest.skip("make is not installed")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    # As from a clean shell: `make test ARGS=...` exports ARGS, which would reach `make serve`.
    variables = set(re.findall(r"^(\w+)\s*[:?]?=", makefile, re.M)) | set(re.findall(r"\$\((\w+)\)", makefile))
    env = {k: v for k, v in base_env(tmp_path).items() if k not in variables}
    # `make serve` installs .venv first when it is missing or stale, which needs the network;
    # `make test` (CI) has just installed it, so there the stamp is up to date.
    if subprocess.run(["make", "-q", "install"], cwd=REPO, env=env, capture_output=True).returncode != 0:
        reason = ".venv is missing or stale (`make serve` would install it): run the suite with `make test`"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)

    port = free_port()
    env[ENV_PREFIX + "SERVER__PORT"] = str(port)
    make = spawn(["make", "serve"], env=env, port=port)
    make.wait_ready()
    status, _, models = call(port, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == [DEMO_MODEL_ID]
    status, _, body = call(port, "POST", "/v1/chat/completions", {
        "model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 20})
    assert status == 200, body
    assert body["object"] == "chat.completion" and isinstance(body["choices"][0]["message"]["content"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= 20
    assert "DEMO MODEL WITH RANDOM WEIGHTS" in make.log()

    gateways = [pid for pid in children(make.popen.pid)
                if b"nanochat-gateway" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(gateways) == 1, f"make should run the gateway directly, found children {children(make.popen.pid)}"
    os.kill(gateways[0], signal.SIGTERM)
    assert make.wait_exit() == 0, make.log()[-3000:]
    assert "phase=stopped" in make.log()


# --- SIGTERM during a stream ---------------------------------------------------------------------


def test_sigterm_cuts_a_stream_off_after_the_grace_period(spawn, tmp_path, tiny_model_dir):
    grace = 3.0
    port = free_port()
    gateway = spawn(serve_args(port, "--model", str(tiny_model_dir)), port=port, env=base_env(
        tmp_path, server__shutdown_grace_s=str(grace), engine__cpu_threads="1"))
    gateway.wait_ready()
    stream = EventStream(port, "/v1/chat/completions", chat("tiny", 2000, **endless(tiny_model_dir)))
    assert json.loads(stream.next())["choices"][0]["delta"].get("role") == "assistant"

    gateway.popen.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for _ in range(100):  # the signal is handled within a few event-loop turns
        status, _, body = call(port, "GET", "/ready")
        if status == 503:
            break
        time.sleep(0.02)
    assert status == 503 and body["reason"] == "shutting down"
    status, headers, body = call(port, "POST", "/v1/chat/completions", chat("tiny", 5))
    assert status == 503 and body["error"]["code"] == "shutting_down" and "Retry-After" in headers
    assert time.monotonic() - signalled < grace, "the checks above must run inside the grace period"

    events = stream.rest()
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error == {"error": {"message": "The server is shutting down", "type": "service_unavailable_error",
                               "param": None, "code": "shutting_down"}}
    chunks = [json.loads(e) for e in events[1:-2]]
    assert chunks and all(c["choices"][0]["finish_reason"] is None for c in chunks)  # cut off, not finished
    assert gateway.wait_exit() == 0
    assert grace <= time.monotonic() - signalled < grace + EXIT_TIMEOUT_S
    log = gateway.log()
    assert "phase=drain aborting=1" in log and "phase=stopped" in log


def test_sigterm_lets_a_stream_finish_within_the_grace_period(spawn, tmp_path, tiny_model_dir):
    grace = 30.0
    port = free_port()
    gateway = spawn(serve_args(port, "--model", str(tiny_model_dir)), port=port, env=base_env(
        tmp_path, server__shutdown_grace_s=str(grace), engine__cpu_threads="1"))
    gateway.wait_ready()
    stream = EventStream(port, "/v1/chat/completions", chat("tiny", 120, **endless(tiny_model_dir)))
    stream.next()
    gateway.popen.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    events = stream.rest()
    assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    assert gateway.wait_exit() == 0
    assert time.monotonic() - signalled < grace / 2  # it left once the stream was done, not at the deadline
    log = gateway.log()
    assert "phase=drain in_flight=1" in log and "phase=drain aborted=0" in log


def test_a_second_signal_ends_the_grace_period(spawn, tmp_path, tiny_model_dir):
    grace = 60.0
    port = free_port()
    gateway = spawn(serve_args(port, "--model", str(tiny_model_dir)), port=port, env=base_env(
        tmp_path, server__shutdown_grace_s=str(grace), engine__cpu_threads="1"))
    gateway.wait_ready()
    stream = EventStream(port, "/v1/chat/completions", chat("tiny", 2000, **endless(tiny_model_dir)))
    stream.next()
    gateway.popen.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    while call(port, "GET", "/ready")[0] != 503:
        assert time.monotonic() - signalled < 5
        time.sleep(0.02)
    gateway.popen.send_signal(signal.SIGINT)  # as a second Ctrl-C would

    events = stream.rest()
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down"
    assert gateway.wait_exit() == 0
    assert time.monotonic() - signalled < grace / 4
    assert "phase=drain signal=SIGINT: ending in-flight generations now" in gateway.log()


def test_sigterm_while_the_model_is_being_resolved_exits_at_once(spawn, tmp_path):
    """The demo model takes seconds to write: a signal then must not wait for it (nor would a download)."""
    port = free_port()
    gateway = spawn(serve_args(port, "--model", "demo"), port=port, env=base_env(tmp_path))
    deadline = time.monotonic() + START_TIMEOUT_S
    reason = None
    while reason is None and time.monotonic() < deadline and gateway.popen.poll() is None:
        try:
            reason = call(port, "GET", "/ready", timeout=1)[2]["reason"]
        except OSError:
            time.sleep(0.02)
    if reason != "resolving model":
        pytest.skip(f"the demo model was written before the port answered (/ready: {reason!r})")
    gateway.popen.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert gateway.wait_exit() == 0
    assert time.monotonic() - signalled < 5
    assert "phase=resolve " not in gateway.log()  # it did not wait for the model


# --- start-up phases and structured logs ---------------------------------------------------------


def test_startup_phases_and_json_request_logs(spawn, tmp_path, tiny_model_dir):
    config = tmp_path / "config.toml"
    config.write_text(f"""
[plugins]
enabled = ["request_log", "api_keys", "stop_sequences"]
[plugins.api_keys]
keys = {{ alice = "{DIGEST}" }}
""", encoding="utf-8")
    port = free_port()
    gateway = spawn(serve_args(port, "--config", str(config), "--model", str(tiny_model_dir)), port=port,
                    env=base_env(tmp_path, logging__format="json", engine__cpu_threads="1"))
    seen: set[tuple[int, int, str]] = set()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and gateway.popen.poll() is None:
        try:
            health = call(port, "GET", "/health", timeout=2)[0]
            ready, _, body = call(port, "GET", "/ready", timeout=2)
        except OSError:
            time.sleep(0.01)  # the port is not open yet
            continue
        seen.add((health, ready, body["reason"]))
        if ready == 200:
            break
    assert (200, 503, "loading model") in seen, seen  # the port answers while the model loads
    assert (200, 200, "ready") in seen, seen
    while '"msg": "phase=ready' not in gateway.log():  # written a moment after /ready turns 200
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.01)

    secret_prompt = "zebra-umbrella-secret-prompt"
    body = {"model": "tiny", "messages": [{"role": "user", "content": secret_prompt}], "max_tokens": 3}
    assert call(port, "POST", "/v1/chat/completions", body, ALICE)[0] == 200
    assert call(port, "POST", "/v1/chat/completions", body, {"Authorization": "Bearer wrong-key"})[0] == 401
    gateway.popen.send_signal(signal.SIGTERM)
    assert gateway.wait_exit() == 0

    log = gateway.log()
    records = []
    for line in log.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    steps = phases("\n".join(r["msg"] for r in records if r["logger"].startswith("nanochat_gateway")))
    names = [p["phase"] for p in steps]
    start_up = ["config", "resolve", "load", "warmup", "ready"]
    assert [n for n in names if n in start_up] == start_up, names
    for step in steps:
        if step["phase"] in start_up:
            assert float(step["seconds"]) >= 0, step
    assert names[-3:] == ["drain", "drain", "stopped"] and "shutdown" in names

    requests = [r for r in records if r["logger"] == "nanochat_gateway.request"]
    assert [(r["path"], r["status"], r["key_name"]) for r in requests] == [
        ("/v1/chat/completions", 200, "alice"), ("/v1/chat/completions", 401, None)]
    assert requests[0]["completion_tokens"] >= 1 and requests[0]["latency_ms"] > 0
    for secret in (KEY, DIGEST.removeprefix("sha256:"), "wrong-key", secret_prompt):
        assert secret not in log


# --- restart from the Hugging Face cache ---------------------------------------------------------


def test_restart_from_the_hf_cache_offline(spawn, tmp_path, tiny_model_dir):
    """hf:acme/tiny, fetched once (here: a pre-filled cache), serves twice with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hf-home" / "hub"
    files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    snapshot = make_hf_cache(cache, "acme/tiny", files, commit=commit_hash("acme/tiny"))
    before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))
    env = base_env(tmp_path, engine__cpu_threads="1")

    download = subprocess.run([sys.executable, "-m", "nanochat_gateway", "download", "hf:acme/tiny"], env=env,
                              capture_output=True, text=True, timeout=60)
    assert download.returncode == 0, download.stderr
    assert download.stdout.strip() == str(snapshot)

    for attempt in range(2):
        port = free_port()
        gateway = spawn(serve_args(port, "--model", "hf:acme/tiny"), port=port, env=env)
        gateway.wait_ready()
        status, _, models = call(port, "GET", "/v1/models")
        assert status == 200 and [m["id"] for m in models["data"]] == ["acme/tiny"]
        status, _, body = call(port, "POST", "/v1/completions",
                               {"model": "acme/tiny", "prompt": "Once", "max_tokens": 3})
        assert status == 200 and body["usage"]["completion_tokens"] >= 1, body
        gateway.popen.send_signal(signal.SIGTERM)
        assert gateway.wait_exit() == 0, f"start {attempt + 1}"
        resolved = next(p for p in phases(gateway.log()) if p["phase"] == "resolve")
        assert resolved["source"] == "hf:acme/tiny" and resolved["path"] == str(snapshot)
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) == before  # nothing fetched or written


# --- two processes, one redis-server ------------------------------------------------------------


def test_two_gateway_processes_share_one_request_limit(spawn, tmp_path, tiny_model_dir, redis_server):
    config = tmp_path / "config.toml"
    config.write_text(f"""
[plugins]
enabled = ["request_log", "api_keys", "rate_limit"]
[plugins.api_keys]
keys = {{ alice = "{DIGEST}" }}
[plugins.rate_limit]
backend = "redis"
redis_url = "{redis_server.url}"
requests_per_minute = 3
""", encoding="utf-8")
    env = base_env(tmp_path, engine__cpu_threads="1", engine__max_batch_size="2")
    gateways = []
    for _ in range(2):  # both start at once: half the waiting
        port = free_port()
        gateways.append(spawn(serve_args(port, "--config", str(config), "--model", str(tiny_model_dir)),
                              port=port, env=env))
    for gateway in gateways:
        gateway.wait_ready()
    one, two = gateways
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
    answers = [call(g.port, "POST", "/v1/completions", body, ALICE) for g in (one, two, one, two, two)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429, 429]
    assert [h["x-ratelimit-remaining-requests"] for _, h, _ in answers[:3]] == ["2", "1", "0"]
    assert answers[3][2]["error"]["code"] == "rate_limit_exceeded"
    assert int(answers[3][1]["Retry-After"]) >= 1
    for gateway in gateways:
        gateway.popen.send_signal(signal.SIGTERM)
    assert [g.wait_exit() for g in gateways] == [0, 0]
