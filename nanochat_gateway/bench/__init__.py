"""`nanochat-gateway bench`: serving and engine benchmarks, measured in one run.

Modes:
  (default)      the real server in a subprocess, N concurrent streaming clients
  --engine-only  the executor's decode throughput at batch B, no HTTP
  --suite        everything the performance targets compare, in one run, with ratios
  --structured   batch-B decode with every row JSON-schema-constrained versus none, and
                 the token mask's own cost per step
  --multiturn    conversations of several turns, prefix cache on and off, in one run
  --precisions float32,bfloat16,int8
                 precisions side by side: engine decode at batch 1 and 16 and HTTP at
                 concurrency 16, each run in its own process (peak memory), in turns
  --quality      teacher-forced KL and top-1 agreement of bf16 and int8 against float32,
                 for the golden checkpoints under --golden DIR and for --model
  --golden DIR   (alone) bf16-versus-fp32 greedy agreement on golden checkpoints

Every mode prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from nanochat_gateway.bench.report import print_json_line, print_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="", help="checkpoint dir or hf: source (default: write the 'bench' demo "
                        "model to ~/.cache/nanochat-gateway/demo-bench)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, auto, or a comma list for --engine-only, "
                        "where int8 (quantize = int8, bf16 tables) and int8-float32 are accepted too")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--engine-only", action="store_true")
    parser.add_argument("--batch", type=int, default=16, help="engine-only batch size")
    parser.add_argument("--layout", default="same,ragged", help="engine-only row positions: same, ragged, shuffled")
    parser.add_argument("--prompt-len", type=int, default=300, help="engine-only mean prompt tokens")
    parser.add_argument("--gen-tokens", type=int, default=96, help="engine-only tokens per row")
    parser.add_argument("--suite", action="store_true")
    parser.add_argument("--structured", action="store_true", help="structured output (schema-constrained) decode cost")
    parser.add_argument("--multiturn", action="store_true",
                        help="--concurrency conversations of --turns turns, --max-tokens reply tokens each")
    parser.add_argument("--turns", type=int, default=6, help="multiturn: turns per conversation")
    parser.add_argument("--turn-words", type=int, default=150, help="multiturn: words of each new user message")
    parser.add_argument("--golden", type=Path, default=None)
    parser.add_argument("--precisions", default="", help="comma list, e.g. float32,bfloat16,int8")
    parser.add_argument("--rounds", type=int, default=2, help="--precisions: turns each configuration takes")
    parser.add_argument("--quality", action="store_true")


def _model_path(args: argparse.Namespace) -> str:
    if args.model:
        return str(args.model)
    from nanochat_gateway.model.demo import is_demo_dir, write_demo_checkpoint
    from nanochat_gateway.model.sources import default_demo_dir

    path = default_demo_dir().with_name("demo-bench")
    if not is_demo_dir(path):
        print(f"writing the 'bench' demo model to {path} ...")
        write_demo_checkpoint(path, "bench", tokenizer_cache=path.parent / "tokenizers")
    return str(path)


def main(args: argparse.Namespace) -> int:
    if args.quality:
        from nanochat_gateway.bench.quality import run_quality

        if not args.golden and not args.model:
            print("bench --quality: give --golden DIR, --model DIR, or both")
            return 2
        print_json_line(run_quality(args.golden, args.model, args.prompt_len))
        return 0
    if args.golden:
        from nanochat_gateway.bench.suite import golden_agreement

        result = golden_agreement(args.golden)
        print_table("bf16 vs fp32 greedy agreement (40 tokens)", [(k, v) for k, v in result.items()])
        print_json_line({"mode": "golden", **result})
        return 0
    model = _model_path(args)
    if args.precisions:
        from nanochat_gateway.bench.precisions import run_precisions
        from nanochat_gateway.bench.suite import special_ids

        result = asyncio.run(run_precisions(model, args.precisions.split(","), special_ids(model), args))
    elif args.suite:
        from nanochat_gateway.bench.suite import run_suite

        result = asyncio.run(run_suite(model, args))
    elif args.structured:
        from nanochat_gateway.bench.structured import run_structured

        result = asyncio.run(run_structured(model, args))
    elif args.multiturn:
        from nanochat_gateway.bench.multiturn import run_multiturn

        result = asyncio.run(run_multiturn(model, args))
    elif args.engine_only:
        from nanochat_gateway.bench.suite import run_engine_only

        result = asyncio.run(run_engine_only(model, args))
    else:
        from nanochat_gateway.bench.suite import run_serving

        result = asyncio.run(run_serving(model, args))
    print_json_line(result)
    return 0
