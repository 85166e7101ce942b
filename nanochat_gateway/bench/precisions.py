"""Precisions side by side on one model: engine decode at batch 1 and 16, HTTP at concurrency 16.

Every measurement runs in a fresh process (an engine-only bench, or a server), so each
configuration's peak resident memory is its own, and the configurations take turns over
`rounds` rounds: a slow spell on a shared machine then hits all of them rather than one.
Each figure in the table is the best of its rounds (noise only ever slows a run down); each
ratio is the median over rounds of the ratio within a round, whose runs were back to back;
peak memory is the largest seen.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from nanochat_gateway.bench.engine import precision_settings
from nanochat_gateway.bench.http import drive, running_server
from nanochat_gateway.bench.report import pair_ratios, print_table

BATCHES = (1, 16)


def engine_run(model: str, precision: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """One `bench --engine-only` in its own process; its result dict."""
    cmd = [sys.executable, "-m", "nanochat_gateway", "bench", "--engine-only", "--model", model,
           "--dtype", precision, "--batch", str(batch), "--layout", "same", "--prompt-len", str(args.prompt_len),
           "--gen-tokens", str(args.gen_tokens), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{precision} at batch {batch} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])["results"][0]
    return result


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


async def run_precisions(model: str, precisions: list[str], ignore_ids: list[int],
                         args: argparse.Namespace) -> dict[str, Any]:
    """Measure every precision in turn for `args.rounds` rounds; print the table and ratios."""
    for name in precisions:
        precision_settings(name)  # an unknown name fails before anything runs
    runs: dict[str, list[dict[str, Any]]] = {}  # "int8/b1", "int8/http" -> one run per round
    for round_no in range(args.rounds):
        for batch in BATCHES:
            for name in precisions:
                run = engine_run(model, name, batch, args)
                print(f"round {round_no + 1}: {name} batch {batch}: {run['step_ms']:.1f} ms/step", flush=True)
                runs.setdefault(f"{name}/b{batch}", []).append(run)
        for name in precisions:
            run = await http_run(model, name, ignore_ids, args)
            print(f"round {round_no + 1}: {name} HTTP c=16: {run['output_tokens_per_s']:.1f} tokens/s", flush=True)
            runs.setdefault(f"{name}/http", []).append(run)
    rows = {name: _row(name, runs) for name in precisions}
    for name, row in rows.items():
        print_table(f"{name} ({runs[f'{name}/b1'][0]['precision']})", list(row.items()))
    ratios = _ratios(runs, rows, precisions)
    if ratios:
        print_table("ratios to bfloat16, median over rounds (int8 targets: batch 1 >= 1.6, batch 16 >= 1.5, "
                    "peak memory < 1)", list(ratios.items()))
    return {"mode": "precisions", "rounds": args.rounds, "threads": args.threads, "rows": rows, "ratios": ratios,
            "runs": runs}


def _speed(run: dict[str, Any]) -> float:
    return float(run["output_tokens_per_s"] if "output_tokens_per_s" in run else run["tokens_per_s"])


def _peak_mib(runs: list[dict[str, Any]]) -> int:
    return round(max((r["peak_rss_bytes"] or 0 for r in runs), default=0) / 2**20)


def _row(name: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for batch in BATCHES:
        best = max(runs[f"{name}/b{batch}"], key=_speed)
        row[f"batch {batch} ms/step"] = round(best["step_ms"], 1)
        row[f"batch {batch} tokens/s"] = round(best["tokens_per_s"], 1)
    row["HTTP c=16 tokens/s"] = round(max(map(_speed, runs[f"{name}/http"])), 1)
    for batch in BATCHES:
        row[f"batch {batch} engine peak RSS MiB"] = _peak_mib(runs[f"{name}/b{batch}"])
    row["server peak RSS MiB"] = _peak_mib(runs[f"{name}/http"])
    return row


def _ratios(runs: dict[str, list[dict[str, Any]]], rows: dict[str, dict[str, Any]],
            precisions: list[str]) -> dict[str, float]:
    if "bfloat16" not in precisions:
        return {}
    out = {}
    for name in (p for p in precisions if p != "bfloat16"):
        for label, kind in (("batch 1", "b1"), ("batch 16", "b16"), ("HTTP c=16", "http")):
            ratios = pair_ratios([_speed(r) for r in runs[f"{name}/{kind}"]],
                                 [_speed(r) for r in runs[f"bfloat16/{kind}"]])
            out[f"{name} / bf16, {label}"] = round(statistics.median(ratios), 2)
        for key in ("batch 1 engine peak RSS MiB", "batch 16 engine peak RSS MiB", "server peak RSS MiB"):
            if rows["bfloat16"][key]:
                out[f"{name} / bf16, {key.removesuffix(' MiB')}"] = round(rows[name][key] / rows["bfloat16"][key], 2)
    return out
