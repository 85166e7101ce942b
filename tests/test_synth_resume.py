"""Kill `synth safety` with SIGKILL midway, resume it: nothing written twice, no index lost, tails repaired."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from synth_server import ScriptedEndpoint, first_message_for

from nanochat_gateway.synth.check import run_check
from nanochat_gateway.synth.plan import plan_conversation
from nanochat_gateway.synth.prompts import generation_request
from nanochat_gateway.synth.store import read_sidecar, sidecar_path

COUNT, SEED = 12, 3


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def _cli(url: str, out: Path, *extra: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "OPENAI_API_KEY": ""}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nanochat_gateway", "synth", "safety", "--base-url", url, "--model", "m",
        "--count", str(COUNT), "--seed", str(SEED), "--concurrency", "3", "--timeout", "10", "--out", str(out),
        "--max-context", "4096", *extra, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_sigkill_then_resume(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(default="object", delay_s=0.25)
    server = await aiohttp_server(endpoint.app)
    url = str(server.make_url("/v1"))
    out = tmp_path / "safety.jsonl"

    first = await _cli(url, out)
    try:
        for _ in range(1500):
            if _lines(out) >= 4:
                break
            await asyncio.sleep(0.02)
        first.kill()  # SIGKILL: no cleanup, no summary
    finally:
        await first.wait()
    written_before = _lines(out)
    assert 4 <= written_before < COUNT, "the run must be killed midway"
    # What a crash in the middle of a write leaves behind.
    with open(out, "a") as f:
        f.write('[{"role": "user", "content": "half a li')
    with open(sidecar_path(out), "a") as f:
        f.write('{"index": 99, "categ')

    second = await _cli(url, out, "--resume")
    stdout, stderr = await asyncio.wait_for(second.communicate(), 60)
    assert second.returncode == 0, (stdout + stderr).decode()
    report = stdout.decode()
    assert f"{COUNT} of {COUNT} conversations" in report and "removed a truncated last line" in report

    assert run_check(out) == 0
    firsts = [json.loads(line)[0]["content"] for line in out.read_text().splitlines()]
    assert len(firsts) == COUNT and len(set(firsts)) == COUNT  # no duplicate
    # No lost index: every conversation the plan asks for, indexes 0..COUNT-1, is in the file.
    expected = {first_message_for(generation_request(plan_conversation(SEED, i), "m", max_tokens=1,
                                                     temperature=None).messages[-1]["content"])
                for i in range(COUNT)}
    assert set(firsts) == expected
    records = read_sidecar(sidecar_path(out)).records
    assert sorted(records) == list(range(COUNT))
    assert all(r["status"] == "accepted" for r in records.values())
    assert len(read_sidecar(sidecar_path(out)).headers) == 2  # one per run
