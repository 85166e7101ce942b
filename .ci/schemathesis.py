"""A bounded schemathesis run against a real gateway: no 5xx, no response outside /openapi.json.

Starts `nanochat-gateway serve` on a free loopback port with a generated tiny demo model, waits
for /ready, runs `schemathesis run` against /openapi.json for --max-time seconds with every check
except positive_data_acceptance (the gateway refuses with 400 some values the OpenAI schema
allows: a `tool` role, or more than [limits] permits), then reads the HAR report and prints how
many requests were sent, their statuses, and the failures. Exits non-zero when schemathesis
found a failure, when any response was a 5xx, or when the gateway logged a traceback.

    python .ci/schemathesis.py [--max-time 60] [--seed N] [--workers 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 180.0
# Small generations: the run is about inputs and shapes, not about decoding speed.
SERVER_SETTINGS = {
    "ENGINE__MAX_TOKENS": "16",
    "LIMITS__MAX_TOKENS_LIMIT": "64",
    "ENGINE__MAX_BATCH_SIZE": "8",
    "LOGGING__LEVEL": "warning",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the gateway exited with {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway was not ready after {READY_TIMEOUT_S:.0f} s")


def start_gateway(work: Path, port: int) -> subprocess.Popen[bytes]:
    model = work / "tiny"
    subprocess.run([str(BIN / "nanochat-gateway"), "demo-model", str(model), "--preset", "tiny"], check=True,
                   stdout=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOCHAT_GATEWAY__")}
    env.update({f"NANOCHAT_GATEWAY__{k}": v for k, v in SERVER_SETTINGS.items()})
    env.update(XDG_CACHE_HOME=str(work / "cache"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = (work / "gateway.log").open("wb")
    return subprocess.Popen([str(BIN / "nanochat-gateway"), "serve", "--model", str(model), "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def run_schemathesis(url: str, report_dir: Path, args: argparse.Namespace) -> int:
    command = [
        str(BIN / "schemathesis"), "run", f"{url}/openapi.json", "--max-time", str(args.max_time),
        "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--workers", str(args.workers),
        "--request-timeout", "60", "--max-response-time", "60", "--report", "har,junit",
        "--report-dir", str(report_dir), "--no-color",
    ]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    print("+", " ".join(command), flush=True)
    # In the scratch directory: schemathesis keeps a cache of its own in the working directory.
    return subprocess.run(command, cwd=report_dir.parent).returncode


def summarize(report_dir: Path) -> tuple[int, collections.Counter[int]]:
    entries = []
    for har in sorted(report_dir.glob("har-*.json")):
        entries += json.loads(har.read_text(encoding="utf-8"))["log"]["entries"]
    return len(entries), collections.Counter(entry["response"]["status"] for entry in entries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-time", type=int, default=60, help="seconds of fuzzing (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="schemathesis seed (default: random)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ncg-schemathesis-") as tmp:
        work = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_gateway(work, port)
        try:
            wait_ready(url, server)
            code = run_schemathesis(url, work / "report", args)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        requests, statuses = summarize(work / "report")
        server_errors = sum(n for status, n in statuses.items() if status >= 500)
        log = (work / "gateway.log").read_text(encoding="utf-8", errors="replace")
        tracebacks = log.count("Traceback")
        shown = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        print(f"schemathesis: {requests} requests; statuses {shown}; 5xx: {server_errors}; "
              f"gateway tracebacks: {tracebacks}; schemathesis exit code {code}")
        if tracebacks:
            print(log[-4000:])
        return 0 if code == 0 and server_errors == 0 and tracebacks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
