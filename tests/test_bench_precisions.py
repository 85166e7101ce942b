"""`bench --quality` and `bench --precisions`: what they measure and report (not how fast)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import GOLDEN, golden_expected
from nanochat_gateway.bench.engine import precision_settings
from nanochat_gateway.bench.quality import checkpoint_quality, divergence, golden_dirs


def test_precision_names():
    assert precision_settings("int8") == ("auto", "int8")
    assert precision_settings("int8-float32") == ("float32", "int8")
    assert precision_settings("bfloat16") == ("bfloat16", "none")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        precision_settings("int4")


def test_divergence_of_equal_and_of_different_logits():
    logits = torch.randn(5, 30)
    assert divergence(logits, logits) == {"kl": 0.0, "top1": 1.0}
    shifted = logits.clone()
    shifted[:, 0] += 100.0  # every position now predicts token 0
    d = divergence(logits, shifted)
    assert d["kl"] > 1.0 and d["top1"] == (logits.argmax(-1) == 0).double().mean().item()


def test_quality_of_bf16_and_int8_against_float32_on_a_golden_checkpoint():
    assert [d.name for d in golden_dirs(GOLDEN)] == ["2025-10", "2025-12", "2026-01", "2026-03", "2026-07"]
    result = checkpoint_quality(str(GOLDEN / "2026-07"), golden_expected("2026-07")["prompt"][:120])
    assert result["positions"] == 120
    for precision in ("bfloat16", "int8", "int8-float32"):
        assert 0 < result[precision]["kl"] < 2e-3 and result[precision]["top1"] > 0.85
    assert result["int8_kl_over_bf16_kl"] == result["int8"]["kl"] / result["bfloat16"]["kl"]


def test_precisions_mode_measures_each_configuration_in_its_own_process(tiny_model_dir):
    cmd = [sys.executable, "-m", "nanochat_gateway", "bench", "--precisions", "bfloat16,int8", "--rounds", "1",
           "--model", str(tiny_model_dir), "--threads", "1", "--prompt-len", "24", "--gen-tokens", "8",
           "--prompt-words", "10", "--max-tokens", "8"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mode"] == "precisions" and set(result["rows"]) == {"bfloat16", "int8"}
    runs = result["runs"]
    assert runs["int8/b16"][0]["precision"] == "int8-bfloat16" and runs["bfloat16/b1"][0]["batch"] == 1
    for row in result["rows"].values():
        assert row["batch 1 tokens/s"] > 0 and row["batch 16 tokens/s"] > 0 and row["HTTP c=16 tokens/s"] > 0
        assert row["batch 1 engine peak RSS MiB"] > 0 and row["server peak RSS MiB"] > 0
    ratio = runs["int8/b16"][0]["tokens_per_s"] / runs["bfloat16/b16"][0]["tokens_per_s"]
    assert result["ratios"]["int8 / bf16, batch 16"] == round(ratio, 2)
    assert "ratios to bfloat16, median over rounds" in done.stdout
