"""Engine-only benchmark: decode throughput of one executor at batch B, no HTTP.

B independent greedy requests are submitted at once; once every row has prefilled,
the steps where all B rows decode together are timed wall-clock (loop overhead
included). "same" puts every row at the same position; "ragged" and "shuffled" spread
prompt lengths around the same mean, so rows sit at different positions.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import time
from typing import Any

import torch

from nanochat_gateway.engine.executor import DeviceExecutor
from nanochat_gateway.engine.grammar import GrammarCompiler
from nanochat_gateway.engine.options import ExecutorOptions, StepInfo
from nanochat_gateway.engine.request import ChoiceDelta, EngineError, GenerationRequest, SamplingParams
from nanochat_gateway.engine.stream import RequestStream
from nanochat_gateway.model.loader import load_model

# What --dtype and --precisions accept: name -> ([model] dtype, [model] quantize)
PRECISIONS = {
    "float32": ("float32", "none"), "bfloat16": ("bfloat16", "none"), "float16": ("float16", "none"),
    "auto": ("auto", "none"), "int8": ("auto", "int8"), "int8-float32": ("float32", "int8"),
}


def precision_settings(name: str) -> tuple[str, str]:
    """(dtype, quantize) for a precision name such as "bfloat16" or "int8"."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def prompt_lengths(batch: int, mean: int, layout: str, seed: int = 0) -> list[int]:
    """"same": every row at one position; "ragged": evenly spread over [mean/5, 9*mean/5]
    (the same mean) in arrival order, as rows admitted over time sit; "shuffled": the same
    lengths in random slot order, the worst case for grouping rows by position."""
    if layout == "same" or batch == 1:
        return [mean] * batch
    lo, hi = max(1, mean // 5), mean * 9 // 5
    lengths = [round(lo + (hi - lo) * i / (batch - 1)) for i in range(batch)]
    if layout == "shuffled":
        random.Random(seed).shuffle(lengths)
    elif layout != "ragged":
        raise ValueError(f"unknown layout {layout!r}: use same, ragged or shuffled")
    return lengths


async def _drain(stream: RequestStream) -> int:
    tokens = 0
    async for item in stream:
        if isinstance(item, EngineError):
            raise item
        if isinstance(item, ChoiceDelta):
            tokens += len(item.token_ids)
    return tokens


async def decode_throughput(source: str, *, dtype: str, batch: int, layout: str = "same", prompt_len: int = 300,
                            gen_tokens: int = 64, threads: int = 0, seed: int = 0, temperature: float = 0.0,
                            schema: dict[str, Any] | None = None, quantize: str = "none") -> dict[str, Any]:
    """Tokens/s of full-batch decode steps for `batch` rows of independent requests.

    Rows sample with ``temperature`` (seeded per row); with ``schema`` every row's output is
    constrained to it, as a ``json_schema`` response format does. peak_rss_bytes is this
    process's peak resident memory so far: a fair figure for the model only when the process
    loaded nothing else (the --precisions mode runs each alone).

    The model is loaded by the executor's own thread, as the server does: torch work done
    on another thread first would leave a second OpenMP pool behind that slows the steps.
    """
    options = ExecutorOptions(max_batch_size=batch, prefill_chunk_tokens=max(256, prompt_len * 2),
                              cpu_threads=threads or (os.cpu_count() or 1), admit_window_ms=20.0)
    device = torch.device("cpu")
    executor = DeviceExecutor("bench", device, lambda d: load_model(source, device=d, dtype=dtype, quantize=quantize),
                              options)
    steps: list[tuple[float, StepInfo]] = []
    executor.hooks.listeners.append(lambda info: steps.append((time.perf_counter(), info)))
    executor.start(asyncio.get_running_loop())
    while not executor.ready.is_set():
        await asyncio.sleep(0.01)
    if executor.status != "ready":
        raise RuntimeError(f"executor failed: {executor.failure}")
    loaded = executor.loaded
    assert loaded is not None  # set before the executor reports ready
    rng = random.Random(seed)
    specials = loaded.tokenizer.special_ids
    vocab = [t for t in range(loaded.config.vocab_size) if t not in specials]
    grammar = None
    if schema is not None:
        compiler = GrammarCompiler(loaded.tokenizer, loaded.config.vocab_size)
        grammar = compiler.compile(schema)
        compiler.close()
    requests = [
        GenerationRequest(prompt_ids=[loaded.tokenizer.bos_id] + rng.choices(vocab, k=n - 1),
                          max_tokens=gen_tokens, grammar=grammar,
                          sampling=SamplingParams(temperature=temperature, seed=seed + i))
        for i, n in enumerate(prompt_lengths(batch, prompt_len, layout, seed))
    ]
    try:
        streams = [executor.submit(r) for r in requests]
        produced = sum(await asyncio.gather(*(_drain(s) for s in streams)))
    finally:
        executor.stop()
    step_seconds = sum(info.seconds for _, info in steps)
    full = [t for t, info in steps if info.batch_size == batch and info.prefill_tokens == 0]
    if len(full) < 3:
        raise RuntimeError("too few full-batch decode steps to measure; raise gen_tokens")
    seconds = full[-1] - full[0]
    return {
        "batch": batch, "layout": layout, "dtype": str(loaded.dtype).removeprefix("torch."),
        "precision": loaded.precision, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": options.cpu_threads, "decode_steps": len(full) - 1,
        "tokens_per_s": batch * (len(full) - 1) / seconds, "step_ms": 1000 * seconds / (len(full) - 1),
        "tokens_generated": produced,
        "mask_share_of_step": executor.counters.grammar_mask_seconds / step_seconds if step_seconds else 0.0,
    }
