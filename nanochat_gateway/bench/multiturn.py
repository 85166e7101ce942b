"""Multi-turn benchmark: what the prefix cache does for conversations, cache on and off.

C conversations run at once, each for T turns. Every turn sends the whole conversation
again, as OpenAI clients do: the earlier messages, the replies as the server returned
them, and a new user message of about W words; the reply is R tokens (the end-of-turn
and other special tokens are biased away, so replies are plain text of a fixed length).
The same run is made against a server with the prefix cache on and one with it off.
Time to first token per turn shows what the cache saves; throughput of single-turn
prompts that share nothing (runs alternating between the two servers) shows what the
lookup costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from contextlib import AbstractAsyncContextManager
from statistics import mean, median
from typing import Any

import aiohttp

from nanochat_gateway.bench.http import RequestTiming, _one_request, drive, running_server
from nanochat_gateway.bench.prompts import synthetic_prompt
from nanochat_gateway.bench.report import pair_ratios, percentile, print_table

SHARE_NOTHING_PAIRS = 4  # back-to-back runs on both servers; the ratio is the pairs' median


def special_token_ids(model: str) -> list[int]:
    """Every special token of the model's tokenizer, to bias away from replies."""
    from nanochat_gateway.model.checkpoint import find_checkpoint
    from nanochat_gateway.model.tokenizer import load_tokenizer

    return sorted(load_tokenizer(find_checkpoint(model).tokenizer_path).special_ids)


async def conversation(session: aiohttp.ClientSession, url: str, body: dict[str, Any], *, index: int, turns: int,
                       words: int) -> list[RequestTiming]:
    """One conversation, turn after turn; stops at the first failed turn."""
    messages: list[dict[str, str]] = []
    timings = []
    for turn in range(turns):
        messages.append({"role": "user", "content": synthetic_prompt(words, 1000 * index + turn)})
        timing = await _one_request(session, url, {**body, "messages": list(messages)})
        timings.append(timing)
        if not timing.ok:
            break
        messages.append({"role": "assistant", "content": timing.text})
    return timings


async def drive_conversations(url: str, model_id: str, *, conversations: int, turns: int, words: int,
                              reply_tokens: int, ignore_ids: list[int]) -> dict[str, Any]:
    """Run every conversation at once; summarise time to first token turn by turn."""
    body = {"model": model_id, "max_tokens": reply_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": {str(t): -100 for t in ignore_ids}}
    connector = aiohttp.TCPConnector(limit=conversations)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        start = time.perf_counter()
        runs = await asyncio.gather(*(conversation(session, url, body, index=i, turns=turns, words=words)
                                      for i in range(conversations)))
        wall = time.perf_counter() - start
        try:
            async with session.get(f"{url}/stats") as response:
                stats = await response.json()
        except aiohttp.ClientError as exc:  # a server that died mid-run: report what was measured
            stats = {"error": str(exc)}
    per_turn = []
    for turn in range(turns):
        done = [run[turn] for run in runs if len(run) > turn and run[turn].ok]
        ttft = [t.first_token - t.start for t in done if t.first_token is not None]
        cached = [t.cached_tokens for t in done if t.cached_tokens is not None]
        per_turn.append({
            "turn": turn + 1, "completed": len(done), "ttft_p50_s": percentile(ttft, 50),
            "ttft_p95_s": percentile(ttft, 95), "prompt_tokens": mean(t.prompt_tokens for t in done) if done else None,
            "cached_tokens": mean(cached) if cached else None,
        })
    timings = [t for run in runs for t in run]
    output = sum(t.completion_tokens for t in timings if t.ok)
    return {
        "turns": per_turn, "wall_s": wall, "output_tokens_per_s": output / wall if wall else 0.0,
        "errors": sorted({t.error for t in timings if t.error})[:5],
        "prefix_cache": [e.get("prefix_cache") for e in stats.get("executors", [])],
    }


async def run_multiturn(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Conversations, then share-nothing load, against two servers: prefix cache on and off."""
    ignore = special_token_ids(model)
    dtype = args.dtype if args.dtype in ("float32", "bfloat16") else "float32"
    results: dict[str, Any] = {"mode": "multiturn", "conversations": args.concurrency, "turns": args.turns,
                               "turn_words": args.turn_words, "reply_tokens": args.max_tokens}

    def server(cache: bool) -> AbstractAsyncContextManager[tuple[str, str]]:
        env = {"NANOCHAT_GATEWAY__ENGINE__PREFIX_CACHE": "true" if cache else "false"}
        return running_server(model, dtype=dtype, max_batch_size=args.concurrency, threads=args.threads,
                              extra_env=env)

    # Both servers stay up (an idle one uses no CPU), so the share-nothing runs can alternate
    # between them and drifts in the machine's load hit both alike.
    async with server(True) as on, server(False) as off:
        servers = {"on": on, "off": off}
        for cache, (url, model_id) in servers.items():
            results[f"cache_{cache}"] = await drive_conversations(
                url, model_id, conversations=args.concurrency, turns=args.turns, words=args.turn_words,
                reply_tokens=args.max_tokens, ignore_ids=ignore)
        distinct = await share_nothing(servers, args, ignore)
    for cache in ("on", "off"):
        results[f"cache_{cache}"]["distinct_tokens_per_s"] = median(distinct[cache])
    results["share_nothing_tokens_per_s"] = distinct
    pairs = pair_ratios(distinct["on"], distinct["off"])
    results["ratios"] = ratios(results["cache_on"], results["cache_off"], median(pairs) if pairs else None)
    print_multiturn(results)
    return results


async def share_nothing(servers: dict[str, tuple[str, str]], args: argparse.Namespace,
                        ignore: list[int]) -> dict[str, list[float]]:
    """Output tokens/s of single-turn prompts that share nothing, in back-to-back pairs of
    runs (on then off, then off then on, ...), so drift in the machine's load hits both."""
    distinct: dict[str, list[float]] = {"on": [], "off": []}
    for k in range(SHARE_NOTHING_PAIRS):
        for cache in ("on", "off") if k % 2 == 0 else ("off", "on"):
            url, model_id = servers[cache]
            run = await drive(url, model_id, requests=4 * args.concurrency, concurrency=args.concurrency,
                              prompt_words=100, max_tokens=args.max_tokens, ignore_ids=ignore, seed=10_000 * (k + 1))
            distinct[cache].append(run["output_tokens_per_s"])
    return distinct


def ratios(on: dict[str, Any], off: dict[str, Any], share_nothing: float | None) -> dict[str, float | None]:
    """The three prefix-cache targets, as ratios measured in one run (share-nothing: the
    median of the back-to-back pairs' ratios)."""
    def ttft(run: dict[str, Any], turn: int) -> float | None:
        value: float | None = run["turns"][turn]["ttft_p50_s"]
        return value

    def divide(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return {
        "ttft_last_vs_first_turn_cache_on": divide(ttft(on, -1), ttft(on, 0)),  # target <= 1.5
        "ttft_last_turn_off_vs_on": divide(ttft(off, -1), ttft(on, -1)),  # target >= 3
        "distinct_throughput_on_vs_off": share_nothing,  # >= 0.95
    }


def print_multiturn(results: dict[str, Any]) -> None:
    for cache in ("on", "off"):
        run = results[f"cache_{cache}"]
        rows: list[tuple[str, object]] = []
        for t in run["turns"]:
            cached = f", cached {t['cached_tokens']:.0f}" if t["cached_tokens"] is not None else ""
            prompt = f"{t['prompt_tokens']:.0f}" if t["prompt_tokens"] is not None else "n/a"
            p50, p95 = t["ttft_p50_s"], t["ttft_p95_s"]
            timing = f"{p50:.3f} / {p95:.3f}" if p50 is not None and p95 is not None else "n/a"
            rows.append((f"turn {t['turn']}: TTFT p50 / p95 (s)", f"{timing} (prompt {prompt}{cached})"))
        rows += [("output tokens/s", run["output_tokens_per_s"]), ("wall (s)", run["wall_s"]),
                 ("share-nothing output tokens/s", run["distinct_tokens_per_s"]),
                 ("prefix cache (/stats)", json.dumps(run["prefix_cache"])), ("errors", run["errors"] or "none")]
        print_table(f"{results['conversations']} conversations x {results['turns']} turns, prefix cache {cache}", rows)
    print_table("ratios (targets: last/first turn <= 1.5, off/on last turn >= 3, share-nothing >= 0.95)",
                list(results["ratios"].items()))
