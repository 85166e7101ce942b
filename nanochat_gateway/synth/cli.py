"""The `synth` command: `synth safety` writes conversations, `synth check FILE` validates a file."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from nanochat_gateway.synth.dedupe import DEFAULT_THRESHOLD
from nanochat_gateway.synth.plan import DEFAULT_BORDERLINE_FRACTION

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


def _bounded(kind: type, low: float, high: float | None = None) -> Any:
    """An argparse type that parses ``kind`` and requires low <= value (<= high)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
        return value
    return parse


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `synth` and its subcommands on the gateway's command line."""
    synth = subparsers.add_parser("synth", help="write SFT conversations with any OpenAI-compatible endpoint")
    sub = synth.add_subparsers(dest="synth_command", required=True)

    safety = sub.add_parser("safety", help="safety conversations in nanochat's CustomJSON format",
                            description="Safety SFT conversations (refusals, support, corrections and borderline "
                                        "requests answered) from an OpenAI-compatible endpoint. See docs/synth.md.")
    safety.add_argument("--base-url", required=True, help="the API root, e.g. https://api.openai.com/v1")
    safety.add_argument("--model", required=True, help="model id at that endpoint")
    safety.add_argument("--count", type=_bounded(int, 1), default=600, help="conversations the file should hold")
    safety.add_argument("--out", type=Path, default=Path("safety_conversations.jsonl"))
    safety.add_argument("--api-key-env", default=DEFAULT_KEY_ENV, metavar="NAME",
                        help=f"environment variable holding the API key (default {DEFAULT_KEY_ENV}; unset: no key)")
    safety.add_argument("--concurrency", type=_bounded(int, 1), default=8, help="requests in flight at most")
    safety.add_argument("--seed", type=int, default=0, help="the same seed asks the same questions")
    safety.add_argument("--temperature", type=_bounded(float, 0, 2), default=1.0)
    safety.add_argument("--max-tokens", type=_bounded(int, 1), default=2048, help="per generated conversation")
    safety.add_argument("--timeout", type=_bounded(float, 0.1), default=120.0, help="seconds per request")
    safety.add_argument("--max-retries", type=_bounded(int, 0), default=8, help="per request")
    safety.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue an existing --out file (default); --no-resume starts it over")
    safety.add_argument("--max-attempts", type=_bounded(int, 1), default=None,
                        help="indexes to try in this run (default: 3 per conversation still missing)")
    safety.add_argument("--borderline-fraction", type=_bounded(float, 0, 1), default=DEFAULT_BORDERLINE_FRACTION,
                        help="share of requests that only look harmful and must be answered")
    safety.add_argument("--dedupe-threshold", type=_bounded(float, 0, 101), default=DEFAULT_THRESHOLD,
                        help="fuzzy similarity (0-100) at which first user messages count as near duplicates; "
                             "101 turns the fuzzy match off")
    safety.add_argument("--tokenizer", type=Path, default=None, metavar="CHECKPOINT_DIR",
                        help="count tokens with this checkpoint's tokenizer (default: a cl100k estimate)")
    safety.add_argument("--max-context", type=_bounded(int, 8), default=None,
                        help="token limit of a conversation (default: the checkpoint's sequence_len, or 2048)")
    safety.add_argument("--judge-model", default=None, help="grade every conversation with this model too")
    safety.add_argument("--judge-base-url", default=None, help="endpoint of the judge (default: --base-url)")
    safety.set_defaults(func=cmd_safety)

    check = sub.add_parser("check", help="validate a JSONL file against nanochat's CustomJSON rules")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check)


def cmd_safety(args: argparse.Namespace) -> int:
    """Run `synth safety`; 0 when the file holds --count conversations, 1 when fewer, 2 for bad options."""
    from nanochat_gateway.synth.length import TokenizerUnavailable
    from nanochat_gateway.synth.run import SynthOptions, run_safety
    from nanochat_gateway.synth.store import StoreError

    options = SynthOptions(
        base_url=args.base_url, model=args.model, out=args.out, count=args.count,
        api_key=os.environ.get(args.api_key_env) or None, api_key_env=args.api_key_env,
        concurrency=args.concurrency, seed=args.seed, temperature=args.temperature, max_tokens=args.max_tokens,
        timeout_s=args.timeout, max_retries=args.max_retries, resume=args.resume, max_attempts=args.max_attempts,
        borderline_fraction=args.borderline_fraction, dedupe_threshold=args.dedupe_threshold,
        tokenizer=args.tokenizer, max_context=args.max_context, judge_model=args.judge_model,
        judge_base_url=args.judge_base_url,
    )
    try:
        summary = asyncio.run(run_safety(options))
    except (TokenizerUnavailable, StoreError, OSError) as exc:
        print(f"nanochat-gateway synth: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    if summary.interrupted:
        return 130
    return 0 if summary.complete and not summary.fatal else 1


def cmd_check(args: argparse.Namespace) -> int:
    from nanochat_gateway.synth.check import run_check

    return run_check(args.file)
