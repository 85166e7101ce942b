"""nanochat-gateway command line: serve | inspect | download | demo-model | keys | bench | synth."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nanochat_gateway import __version__
from nanochat_gateway.config import ConfigError, load_settings

log = logging.getLogger("nanochat_gateway")


def _fail(message: str, code: int = 2) -> int:
    print(f"nanochat-gateway: {message}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------ serve
def cmd_serve(args: argparse.Namespace) -> int:
    from nanochat_gateway.app import create_app
    from nanochat_gateway.logs import setup_logging
    from nanochat_gateway.server import serve

    start = time.monotonic()
    overrides = {k: v for k, v in {
        "server.host": args.host, "server.port": args.port, "model.source": args.model,
        "model.quantize": args.quantize,
    }.items() if v is not None}
    try:
        settings = load_settings(args.config, overrides=overrides)
        setup_logging(settings.logging.level, settings.logging.format)
        app = create_app(settings)
    except ConfigError as exc:
        return _fail(f"configuration error\n{exc}")
    log.info("phase=config file=%s seconds=%.3f", args.config or "(defaults)", time.monotonic() - start)
    try:
        asyncio.run(serve(app, settings.server.host, settings.server.port, grace_s=settings.server.shutdown_grace_s))
    except OSError as exc:  # e.g. the port is taken
        return _fail(f"cannot serve on {settings.server.host}:{settings.server.port}: {exc}", 1)
    return 0


# ---------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    from nanochat_gateway.model.checkpoint import CheckpointError
    from nanochat_gateway.model.loader import load_model
    from nanochat_gateway.model.tokenizer import TokenizerError

    start = time.monotonic()
    try:
        loaded = load_model(args.source, dtype=args.dtype, architecture=args.generation, checkpoint_kind=args.kind,
                            tag=args.tag, step=args.step, quantize=args.quantize)
    except (CheckpointError, TokenizerError, ValueError) as exc:
        return _fail(str(exc), 1)
    facts = loaded.describe()
    facts["load_seconds"] = round(time.monotonic() - start, 3)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    c = facts["config"]
    rows = [
        ("source", facts["source"]), ("model file", facts["model_path"]), ("step", facts["step"]),
        ("generation", f"{facts['generation']} ({facts['generation_summary']})"),
        ("layers x width", f"{c['n_layer']} x {c['n_embd']}"),
        ("heads (q / kv)", f"{c['n_head']} / {c['n_kv_head']}"),
        ("vocab", c["vocab_size"]), ("sequence_len", c["sequence_len"]),
        ("window pattern", f"{c['window_pattern']} -> {facts['windows']}"), ("softcap", facts["softcap"]),
        ("parameters", f"{facts['parameters']:,}"), ("dtype", f"{facts['dtype']} ({facts['dtype_reason']})"),
        ("precision", _describe_precision(facts)),
        ("weights in memory", f"{facts['weight_bytes'] / 2**20:,.1f} MiB as loaded; "
                              + ", ".join(f"{name} {size / 2**20:,.1f} MiB"
                                          for name, size in facts["weight_bytes_by_precision"].items())),
        ("KV cache per token", f"{facts['kv_cache_bytes_per_token']:,} bytes"),
        ("KV cache per slot", f"{facts['kv_cache_bytes_per_token'] * c['sequence_len'] / 2**20:,.1f} MiB "
                              f"at sequence_len"),
        ("demo (random weights)", facts["demo"]), ("load time", f"{facts['load_seconds']:.2f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _describe_precision(facts: dict[str, Any]) -> str:
    if facts["quantize"] == "none":
        return str(facts["dtype"])
    return (f"{facts['precision']} ({facts['quantize']} attention, MLP and lm_head weights, "
            f"{facts['embedding_dtype']} embeddings, {facts['dtype']} activations)")


# --------------------------------------------------------------------- download
def cmd_download(args: argparse.Namespace) -> int:
    from nanochat_gateway.model.hub import HubError, download_checkpoint

    try:
        path = download_checkpoint(args.source, kind=args.kind, tag=args.tag, step=args.step)
    except HubError as exc:
        return _fail(str(exc), 1)
    print(path)
    return 0


# ------------------------------------------------------------------- demo-model
def cmd_demo_model(args: argparse.Namespace) -> int:
    from nanochat_gateway.model.demo import PRESETS, write_demo_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = write_demo_checkpoint(args.dir, PRESETS[args.preset], seed=args.seed)
    print(f"wrote a '{args.preset}' demo checkpoint (RANDOM WEIGHTS) to {out}")
    return 0


# ------------------------------------------------------------------------- keys
def cmd_keys(args: argparse.Namespace) -> int:
    from plugins.api_keys import new_key

    key, digest = new_key()
    print(f"API key for {args.name!r} (shown once, store it now):\n\n  {key}\n")
    print("Paste this line right below the [plugins.api_keys.keys] header of config.toml:\n")
    # A name with dots or @ must be quoted, or TOML reads it as nested tables.
    name = args.name if args.name.replace("_", "").replace("-", "").isalnum() and args.name.isascii() \
        else json.dumps(args.name)
    print(f'  {name} = "{digest}"\n')
    print("or, for keys_env (e.g. NANOCHAT_API_KEYS in docker-compose.yml), add this entry, comma-separated:\n")
    print(f"  {args.name}={digest}")
    return 0


# ------------------------------------------------------------------------ bench
def cmd_bench(args: argparse.Namespace) -> int:
    from nanochat_gateway.bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanochat-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nanochat-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible server")
    serve.add_argument("--config", type=Path, default=None, help="config.toml (default: built-in defaults)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--model", help="override [model] source")
    serve.add_argument("--quantize", choices=["none", "int8"], help="override [model] quantize (int8: CPU only)")
    serve.set_defaults(func=cmd_serve)

    def add_source_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("source", help="flat dir, nanochat base dir, or hf:owner/repo[@revision]")
        p.add_argument("--kind", default="sft", choices=["base", "sft", "rl"], help="base-dir checkpoint kind")
        p.add_argument("--tag", default=None)
        p.add_argument("--step", type=int, default=None)

    inspect = sub.add_parser("inspect", help="print a checkpoint's generation, config and sizes")
    add_source_args(inspect)
    inspect.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                         help="default: auto, what `serve` picks on this machine (and why)")
    inspect.add_argument("--quantize", default="none", choices=["none", "int8"],
                         help="int8: load with int8 linear layers, as [model] quantize = \"int8\" serves")
    inspect.add_argument("--generation", default="auto")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_inspect)

    download = sub.add_parser("download", help="fetch a checkpoint into the Hugging Face cache")
    add_source_args(download)
    download.set_defaults(func=cmd_download)

    demo = sub.add_parser("demo-model", help="write a small checkpoint with random weights")
    demo.add_argument("dir", type=Path)
    demo.add_argument("--preset", default="tiny", choices=["tiny", "bench", "d20"])
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo_model)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="print a fresh key once, and its config line")
    new.add_argument("name")
    new.set_defaults(func=cmd_keys)

    bench = sub.add_parser("bench", help="measure throughput and latency")
    from nanochat_gateway.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    from nanochat_gateway.synth.cli import add_parser as add_synth_parser

    add_synth_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
