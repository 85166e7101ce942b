"""The structured-output benchmark's pieces run, and its schema keeps every row busy."""

from __future__ import annotations

import argparse
import statistics

from nanochat_gateway.bench.engine import decode_throughput
from nanochat_gateway.bench.structured import BENCH_SCHEMA, PAIRS, mask_cost, run_structured


def test_mask_cost_reports_time_per_step(tiny_model_dir):
    result = mask_cost(str(tiny_model_dir), batch=4, steps=20, threads=1)
    assert result["batch"] == 4 and result["vocab"] == 4096
    assert result["mask_ms_per_step"] > 0 and result["advance_ms_per_step"] > 0 and result["us_per_row_token"] > 0


async def test_constrained_decode_keeps_every_row_to_the_end(tiny_model_dir):
    result = await decode_throughput(str(tiny_model_dir), dtype="float32", batch=4, prompt_len=20, gen_tokens=12,
                                     threads=1, temperature=1.0, schema=BENCH_SCHEMA)
    assert result["tokens_generated"] == 4 * 12  # no row finished early: the timed steps are full
    assert 0 < result["mask_share_of_step"] < 1


async def test_the_ratio_is_the_median_of_back_to_back_pairs(tiny_model_dir, capsys):
    args = argparse.Namespace(dtype="float32", batch=2, prompt_len=8, gen_tokens=4, threads=1)
    result = await run_structured(str(tiny_model_dir), args)
    assert len(result["pair_ratios"]) == PAIRS
    assert result["schema_vs_free"] == statistics.median(result["pair_ratios"])
    assert "median of 4 back-to-back pairs" in capsys.readouterr().out
