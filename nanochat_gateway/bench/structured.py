"""What structured output costs: the token mask alone, and batch-16 decode with every row
constrained by a JSON schema against the same decode unconstrained, in one run.

The decode runs come in back-to-back pairs and sample at temperature 1 with the same seeds; the schema asks for at least
eight records, so with random weights no row finishes before the measured steps end.
"""

from __future__ import annotations

import argparse
import time
from statistics import median
from typing import Any

import torch

from nanochat_gateway.bench.engine import decode_throughput
from nanochat_gateway.bench.report import pair_ratios, print_table
from nanochat_gateway.engine.grammar import GrammarCompiler
from nanochat_gateway.engine.token_mask import RowGrammar, TokenMasker
from nanochat_gateway.model.checkpoint import find_checkpoint
from nanochat_gateway.model.tokenizer import load_tokenizer

# One record: nested object, array, enum, bounded numbers, a pattern, required fields.
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "kind": {"enum": ["person", "place", "thing", "event"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 10000},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "where": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "count", "score", "tags", "where"],
    "additionalProperties": False,
}

PAIRS = 4  # constrained and free runs back to back; the ratio is the pairs' median

BENCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"records": {"type": "array", "items": RECORD_SCHEMA, "minItems": 8, "maxItems": 16}},
    "required": ["records"],
    "additionalProperties": False,
}


def mask_cost(model: str, *, batch: int = 16, steps: int = 300, threads: int = 0, seed: int = 0) -> dict[str, Any]:
    """Time the grammar work of ``batch`` rows walking BENCH_SCHEMA on random logits: the mask
    (TokenMasker.apply) and advancing each row's matcher by its sampled token."""
    tokenizer = load_tokenizer(find_checkpoint(model).tokenizer_path)
    vocab = tokenizer.vocab_size
    compiler = GrammarCompiler(tokenizer, vocab)
    grammar = compiler.compile(BENCH_SCHEMA)
    compiler.close()
    masker = TokenMasker(vocab, threads=threads or torch.get_num_threads())
    rows = [RowGrammar(grammar) for _ in range(batch)]
    generator = torch.Generator().manual_seed(seed)
    mask_s = advance_s = 0.0
    for _ in range(steps):
        logits = torch.randn(batch, vocab, generator=generator) * 4
        start = time.perf_counter()
        masker.apply(logits, rows)
        mask_s += time.perf_counter() - start
        tokens = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).flatten().tolist()
        start = time.perf_counter()
        ended = [i for i, token in enumerate(tokens) if not rows[i].accept(token) or rows[i].complete]
        advance_s += time.perf_counter() - start
        for i in ended:
            rows[i] = RowGrammar(grammar)  # finished (or ended on an end token): start a new output
    return {"batch": batch, "steps": steps, "vocab": vocab, "mask_ms_per_step": 1000 * mask_s / steps,
            "advance_ms_per_step": 1000 * advance_s / steps,
            "us_per_row_token": 1e6 * (mask_s + advance_s) / (steps * batch)}


async def run_structured(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Masking cost and constrained-versus-free decode throughput at batch ``args.batch``."""
    dtype = args.dtype if args.dtype in ("float32", "bfloat16") else "float32"
    runs: dict[str, list[dict[str, Any]]] = {"free": [], "schema": []}
    order = [("free", None), ("schema", BENCH_SCHEMA)]
    for pair in range(PAIRS):
        # Back to back, the order alternating, so that load drift on a shared machine hits both sides.
        for name, schema in order if pair % 2 == 0 else order[::-1]:
            runs[name].append(await decode_throughput(
                model, dtype=dtype, batch=args.batch, layout="ragged", prompt_len=args.prompt_len,
                gen_tokens=args.gen_tokens, threads=args.threads, temperature=1.0, schema=schema))
    ratios = pair_ratios([r["tokens_per_s"] for r in runs["schema"]], [r["tokens_per_s"] for r in runs["free"]])
    ratio = median(ratios)
    best = {name: max(r, key=lambda x: x["tokens_per_s"]) for name, r in runs.items()}
    mask = mask_cost(model, batch=args.batch, threads=args.threads)
    print_table(f"grammar work alone, batch {mask['batch']}, vocab {mask['vocab']}", [
        ("mask ms per step", mask["mask_ms_per_step"]), ("advance ms per step", mask["advance_ms_per_step"]),
        ("us per row and token", mask["us_per_row_token"]),
    ])
    print_table(f"decode, batch {args.batch}, ragged positions, {dtype}, temperature 1", [
        ("unconstrained tokens/s (best run)", best["free"]["tokens_per_s"]),
        ("every row schema-constrained tokens/s (best run)", best["schema"]["tokens_per_s"]),
        (f"ratio, median of {PAIRS} back-to-back pairs (target >= 0.90)", ratio),
        ("pair ratios", ", ".join(f"{r:.2f}" for r in ratios)),
        ("share of constrained step time spent masking", best["schema"]["mask_share_of_step"]),
    ])
    return {"mode": "structured", "mask": mask, "free": best["free"], "schema": best["schema"],
            "schema_vs_free": ratio, "pair_ratios": ratios}
