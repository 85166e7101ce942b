"""`synth safety` end to end against the gateway itself, serving the tiny random-weights demo model."""

from __future__ import annotations

import asyncio
import json

from nanochat_gateway.cli import main
from nanochat_gateway.synth.check import run_check
from nanochat_gateway.synth.reasons import FAILURE_REASONS, REJECTION_REASONS
from nanochat_gateway.synth.store import read_sidecar, sidecar_path


async def test_a_run_against_the_gateway_completes_and_says_why_it_fell_short(start_gateway, tiny_model_dir,
                                                                                 tmp_path, capsys):
    gateway = await start_gateway(**{"engine.max_batch_size": 2})
    out = tmp_path / "safety.jsonl"
    argv = ["synth", "safety", "--base-url", gateway.base_url, "--model", gateway.model_id, "--count", "2",
            "--max-attempts", "3", "--max-tokens", "24", "--concurrency", "2", "--timeout", "60",
            "--tokenizer", str(tiny_model_dir), "--out", str(out)]
    code = await asyncio.to_thread(main, argv)
    report = capsys.readouterr().out

    records = read_sidecar(sidecar_path(out)).records
    assert len(records) == 3  # every attempt ran and was recorded
    reasons = [reason for r in records.values() for reason in r.get("reasons", [])]
    accepted = sum(r["status"] == "accepted" for r in records.values())
    # Random weights do not write JSON conversations: the run ends short and names the reasons.
    assert accepted < 2 and code == 1
    assert reasons and set(reasons) <= set(REJECTION_REASONS) | set(FAILURE_REASONS)
    assert "INCOMPLETE" in report and f"{accepted} of 2 conversations" in report
    for reason in set(reasons):
        assert reason in report and REJECTION_REASONS.get(reason, FAILURE_REASONS.get(reason, "")) in report
    # The gateway enforces json_schema while decoding, so synth never falls back to plain prompts.
    assert "refused response_format" not in report
    assert f"the tokenizer of {tiny_model_dir}, limit 2048" in report
    assert "tokens used: 0 prompt" not in report
    if accepted:
        assert run_check(out) == 0
    assert all(json.loads(line) for line in out.read_text().splitlines())
