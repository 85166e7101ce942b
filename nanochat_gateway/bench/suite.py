"""Benchmark scenarios and the ratios the performance targets are stated in."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from nanochat_gateway.bench.engine import decode_throughput, precision_settings
from nanochat_gateway.bench.http import drive, running_server
from nanochat_gateway.bench.report import print_table
from nanochat_gateway.model.loader import load_model


def special_ids(model: str) -> list[int]:
    from nanochat_gateway.model.checkpoint import find_checkpoint
    from nanochat_gateway.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(find_checkpoint(model).tokenizer_path)
    return [tokenizer.assistant_end, tokenizer.bos_id]


async def run_engine_only(model: str, args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for name in args.dtype.split(","):
        dtype, quantize = precision_settings(name)
        for layout in args.layout.split(","):
            r = await decode_throughput(model, dtype=dtype, batch=args.batch, layout=layout, prompt_len=args.prompt_len,
                                        gen_tokens=args.gen_tokens, threads=args.threads, quantize=quantize)
            results.append(r)
            print_table(f"engine-only decode, batch {args.batch}, {layout} positions, {r['precision']}", [
                ("tokens/s", r["tokens_per_s"]), ("ms/step", r["step_ms"]), ("steps timed", r["decode_steps"]),
            ])
    return {"mode": "engine-only", "results": results}


async def run_serving(model: str, args: argparse.Namespace) -> dict[str, Any]:
    ignore = special_ids(model)
    async with running_server(model, dtype=args.dtype, max_batch_size=max(args.concurrency, 1),
                              threads=args.threads) as (url, model_id):
        lone = await drive(url, model_id, requests=3, concurrency=1, prompt_words=args.prompt_words,
                           max_tokens=args.max_tokens, ignore_ids=ignore)
        loaded = await drive(url, model_id, requests=args.requests, concurrency=args.concurrency,
                             prompt_words=args.prompt_words, max_tokens=args.max_tokens, ignore_ids=ignore)
    for name, r in (("1 stream", lone), (f"{args.concurrency} streams", loaded)):
        _print_serving(name, r)
    return {"mode": "serving", "lone": lone, "loaded": loaded,
            "ttft_p50_vs_lone": _ratio(loaded["ttft_p50_s"], lone["ttft_p50_s"])}


def _print_serving(name: str, r: dict[str, Any]) -> None:
    print_table(f"serving: {name} ({r['requests']} requests)", [
        ("output tokens/s", r["output_tokens_per_s"]), ("requests/s", r["requests_per_s"]),
        ("TTFT p50 / p95 (s)", f"{r['ttft_p50_s']:.3f} / {r['ttft_p95_s']:.3f}"),
        ("ITL p50 / p95 (s)", f"{r['itl_p50_s']:.4f} / {r['itl_p95_s']:.4f}"
         if r["itl_p50_s"] is not None else "n/a"),
        ("completed", f"{r['completed']} of {r['requests']}"), ("errors", r["errors"] or "none"),
    ])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


async def run_suite(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """The comparisons of the engine targets, measured in one run on one machine."""
    out: dict[str, Any] = {"mode": "suite", "threads": args.threads or torch.get_num_threads()}
    engine: dict[str, dict[str, Any]] = {}
    for dtype in ("float32", "bfloat16"):
        for batch, layout in ((1, "same"), (16, "same"), (16, "ragged"), (16, "shuffled")):
            # best of two runs: these machines are noisy, and noise only ever slows a run down
            runs = [await decode_throughput(model, dtype=dtype, batch=batch, layout=layout,
                                            prompt_len=args.prompt_len, gen_tokens=args.gen_tokens,
                                            threads=args.threads) for _ in range(2)]
            engine[f"{dtype}/b{batch}/{layout}"] = max(runs, key=lambda r: r["tokens_per_s"])
    out["engine"] = {k: round(v["tokens_per_s"], 1) for k, v in engine.items()}
    dtype = args.dtype if args.dtype in ("float32", "bfloat16") else "float32"
    ignore = special_ids(model)
    async with running_server(model, dtype=dtype, max_batch_size=16, threads=args.threads) as (url, model_id):
        # long streams, so one prefill per request weighs little against the decode being compared
        one = await drive(url, model_id, requests=2, concurrency=1, prompt_words=args.prompt_words,
                          max_tokens=512, ignore_ids=ignore)
        sixteen = await drive(url, model_id, requests=16, concurrency=16, prompt_words=args.prompt_words,
                              max_tokens=512, ignore_ids=ignore)
        lone = await drive(url, model_id, requests=8, concurrency=1, prompt_words=100, max_tokens=64,
                           ignore_ids=ignore)
        load = await drive(url, model_id, requests=64, concurrency=16, prompt_words=100, max_tokens=64,
                           ignore_ids=ignore)
    for name, r in (("1 stream", one), ("16 streams", sixteen), ("lone 100-word request", lone),
                    ("64 requests at concurrency 16", load)):
        _print_serving(name, r)
    e = out["engine"]
    out["http"] = {"one_stream": one, "sixteen_streams": sixteen, "lone": lone, "load64": load}
    out["ratios"] = {
        "ragged_vs_same_b16_fp32": _ratio(e["float32/b16/ragged"], e["float32/b16/same"]),
        "ragged_vs_same_b16_bf16": _ratio(e["bfloat16/b16/ragged"], e["bfloat16/b16/same"]),
        "shuffled_vs_same_b16_fp32": _ratio(e["float32/b16/shuffled"], e["float32/b16/same"]),
        "shuffled_vs_same_b16_bf16": _ratio(e["bfloat16/b16/shuffled"], e["bfloat16/b16/same"]),
        "bf16_vs_fp32_b16": _ratio(e["bfloat16/b16/same"], e["float32/b16/same"]),
        f"http16_vs_engine_b16_{dtype}": _ratio(sixteen["output_tokens_per_s"], e[f"{dtype}/b16/same"]),
        f"http1_vs_engine_b1_{dtype}": _ratio(one["output_tokens_per_s"], e[f"{dtype}/b1/same"]),
        "http16_vs_http1": _ratio(sixteen["output_tokens_per_s"], one["output_tokens_per_s"]),
        "ttft_p50_load64_vs_lone": _ratio(load["ttft_p50_s"], lone["ttft_p50_s"]),
    }
    print_table("engine-only decode tokens/s", list(e.items()))
    print_table("ratios (targets: ragged >= 0.90, bf16 >= 1.5, http16 >= 0.85, http1 >= 0.90, "
                "16 vs 1 >= 5, ttft <= 3)", [(k, v) for k, v in out["ratios"].items()])
    return out


def golden_agreement(golden_dir: Path) -> dict[str, Any]:
    """Share of the 40 greedy tokens where bf16 serving equals fp32, per golden checkpoint."""
    result = {}
    for gen_dir in sorted(p for p in golden_dir.iterdir() if (p / "expected.pt").is_file()):
        expected = torch.load(gen_dir / "expected.pt", weights_only=True)
        tokens = {}
        for dtype in ("float32", "bfloat16"):
            model = load_model(gen_dir, dtype=dtype).model
            ids = list(expected["prompt"][: expected["greedy_prefix_len"]])
            with torch.inference_mode():
                for _ in range(expected["greedy_n"]):
                    ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
            tokens[dtype] = ids[expected["greedy_prefix_len"]:]
        same = sum(a == b for a, b in zip(tokens["float32"], tokens["bfloat16"], strict=True))
        first = next((i for i, (a, b) in enumerate(zip(tokens["float32"], tokens["bfloat16"], strict=True))
                      if a != b), None)
        result[gen_dir.name] = {"agree": same, "of": len(tokens["float32"]), "first_difference": first,
                                "fp32_equals_reference": tokens["float32"] == expected["greedy_naive"]}
    return result
