"""Precisions side by side on one model: engine decode at batch 1 and 16, HTTP at concurrency 16.

Every measurement runs in a fresh process (an engine-only bench, or a server), so each
configuration's peak resident memory is its own, and the configurations take turns over
`rounds` rounds: a slow spell on a shared machine then hits all of them rather than one.
Each figure is the best of its rounds (noise only ever slows a run down); peak memory is
the largest seen.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from nanochat_gateway.bench.engine import precision_settings
from nanochat_gateway.bench.http import drive, running_server
from nanochat_gateway.bench.report import print_table

BATCHES = (1, 16)


def engine_run(model: str, precision: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """One `bench --engine-only` in its own process; its result dict."""
    cmd = [sys.executable, "-m", "nanochat_gateway", "bench", "--engine-only", "--model", model,
           "--dtype", precision, "--batch", str(batch), "--layout", "same", "--prompt-len", str(args.prompt_len),
           "--gen-tokens", str(args.gen_tokens), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{precision} at batch {batch} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["results"][0]


async def http_run(model: str, precision: str, ignore_ids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """16 concurrent streams against a server of this precision; output tokens/s and its peak memory."""
    dtype, quantize = precision_settings(precision)
    stats: dict[str, Any] = {}
    async with running_server(model, dtype=dtype, max_batch_size=16, threads=args.threads, stats=stats,
                              extra_env={"NANOCHAT_GATEWAY__MODEL__QUANTIZE": quantize}) as (url, model_id):
        result = await drive(url, model_id, requests=16, concurrency=16, prompt_words=args.prompt_words,
                             max_tokens=args.max_tokens, ignore_ids=ignore_ids)
    if result["errors"]:
        raise RuntimeError(f"{precision} over HTTP: {result['errors']}")
    return {**result, "peak_rss_bytes": stats.get("peak_rss_bytes")}


def _keep_best(table: dict[str, dict[str, Any]], key: str, run: dict[str, Any], speed: str) -> None:
    best = table.get(key)
    peak = max(filter(None, (run.get("peak_rss_bytes"), best and best.get("peak_rss_bytes"))), default=None)
    if best is None or run[speed] > best[speed]:
        table[key] = dict(run)
    table[key]["peak_rss_bytes"] = peak


async def run_precisions(model: str, precisions: list[str], ignore_ids: list[int],
                         args: argparse.Namespace) -> dict[str, Any]:
    """Measure every precision in turn for `args.rounds` rounds; print the table and ratios."""
    for name in precisions:
        precision_settings(name)  # an unknown name fails before anything runs
    engine: dict[str, dict[str, Any]] = {}
    http: dict[str, dict[str, Any]] = {}
    for round_no in range(args.rounds):
        for batch in BATCHES:
            for name in precisions:
                run = engine_run(model, name, batch, args)
                print(f"round {round_no + 1}: {name} batch {batch}: {run['step_ms']:.1f} ms/step", flush=True)
                _keep_best(engine, f"{name}/b{batch}", run, "tokens_per_s")
        for name in precisions:
            run = await http_run(model, name, ignore_ids, args)
            print(f"round {round_no + 1}: {name} HTTP c=16: {run['output_tokens_per_s']:.1f} tokens/s", flush=True)
            _keep_best(http, name, run, "output_tokens_per_s")
    rows = {name: _row(name, engine, http) for name in precisions}
    for name, row in rows.items():
        print_table(f"{name} ({engine[f'{name}/b1']['precision']})", list(row.items()))
    ratios = _ratios(rows, precisions)
    if ratios:
        print_table("ratios to bfloat16 (int8 targets: batch 1 >= 1.6, batch 16 >= 1.5, peak memory < 1)",
                    list(ratios.items()))
    return {"mode": "precisions", "rounds": args.rounds, "threads": args.threads, "rows": rows, "ratios": ratios,
            "engine": engine, "http": http}


def _row(name: str, engine: dict[str, dict[str, Any]], http: dict[str, dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for batch in BATCHES:
        r = engine[f"{name}/b{batch}"]
        row[f"batch {batch} ms/step"] = round(r["step_ms"], 1)
        row[f"batch {batch} tokens/s"] = round(r["tokens_per_s"], 1)
    row["HTTP c=16 tokens/s"] = round(http[name]["output_tokens_per_s"], 1)
    peaks = [engine[f"{name}/b{b}"]["peak_rss_bytes"] for b in BATCHES]
    row["engine peak RSS MiB"] = round(max(filter(None, peaks), default=0) / 2**20)
    row["server peak RSS MiB"] = round((http[name]["peak_rss_bytes"] or 0) / 2**20)
    return row


def _ratios(rows: dict[str, dict[str, Any]], precisions: list[str]) -> dict[str, float]:
    if "bfloat16" not in rows:
        return {}
    base = rows["bfloat16"]
    out = {}
    for name in precisions:
        if name == "bfloat16":
            continue
        for key in ("batch 1 tokens/s", "batch 16 tokens/s", "HTTP c=16 tokens/s", "engine peak RSS MiB",
                    "server peak RSS MiB"):
            if base[key]:
                out[f"{name} / bf16, {key.removesuffix(' tokens/s')}"] = round(rows[name][key] / base[key], 2)
    return out
