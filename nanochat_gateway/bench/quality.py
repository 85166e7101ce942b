"""Quality of bf16 and int8 serving, measured against float32 rather than assumed.

For each checkpoint the same prompt is run teacher-forced (the no-cache forward, one
prediction per position) in float32 and in each other precision; reported per precision:
the mean KL divergence KL(float32 || precision) of the next-token distributions, and top-1
agreement (the share of positions where both predict the same token). Golden checkpoints
use their own prompt; any other checkpoint a seeded random prompt of ordinary tokens.
"""

from __future__ import annotations

import gc
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nanochat_gateway.bench.engine import precision_settings
from nanochat_gateway.bench.report import print_table
from nanochat_gateway.model.loader import load_model

# int8 as served by default (bf16 embedding tables), and with float32 tables, to show their share
QUALITY_PRECISIONS = ("bfloat16", "int8", "int8-float32")


def golden_dirs(root: Path) -> list[Path]:
    """The golden checkpoint directories under `root` (those holding expected.pt)."""
    return sorted(p for p in root.iterdir() if (p / "expected.pt").is_file())


def golden_prompt(directory: Path) -> list[int]:
    return list(torch.load(directory / "expected.pt", weights_only=True)["prompt"])


def random_prompt(source: str, length: int, seed: int = 0) -> list[int]:
    """BOS then `length - 1` seeded draws from the checkpoint's ordinary (non-special) tokens."""
    from nanochat_gateway.model.checkpoint import find_checkpoint
    from nanochat_gateway.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(find_checkpoint(source).tokenizer_path)
    ordinary = [t for t in range(tokenizer.vocab_size) if t not in tokenizer.special_ids]
    return [tokenizer.bos_id] + random.Random(seed).choices(ordinary, k=length - 1)


def teacher_forced_logits(source: str, precision: str, prompt: list[int]) -> torch.Tensor:
    """(len(prompt), vocab) float32 logits; the model is freed before returning."""
    dtype, quantize = precision_settings(precision)
    loaded = load_model(source, dtype=dtype, quantize=quantize)
    with torch.inference_mode():
        logits: torch.Tensor = loaded.model(torch.tensor([prompt]))[0].float()
    del loaded
    gc.collect()
    return logits


def divergence(reference: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """Mean KL(reference || logits) over positions, in nats, and top-1 agreement."""
    ref_log, log = F.log_softmax(reference.double(), -1), F.log_softmax(logits.double(), -1)
    kl = (ref_log.exp() * (ref_log - log)).sum(-1).mean().item()
    top1 = (reference.argmax(-1) == logits.argmax(-1)).double().mean().item()
    return {"kl": kl, "top1": top1}


def checkpoint_quality(source: str, prompt: list[int],
                       precisions: tuple[str, ...] = QUALITY_PRECISIONS) -> dict[str, Any]:
    """Divergence of each precision from float32 on one checkpoint, plus int8's KL over bf16's."""
    reference = teacher_forced_logits(source, "float32", prompt)
    result: dict[str, Any] = {"positions": len(prompt)}
    for precision in precisions:
        result[precision] = divergence(reference, teacher_forced_logits(source, precision, prompt))
    if "int8" in result and "bfloat16" in result and result["bfloat16"]["kl"] > 0:
        result["int8_kl_over_bf16_kl"] = result["int8"]["kl"] / result["bfloat16"]["kl"]
    return result


def run_quality(golden: Path | None, model: str, prompt_len: int) -> dict[str, Any]:
    """Every golden checkpoint under `golden`, then `model` (either may be absent)."""
    checkpoints = [(d.name, str(d), golden_prompt(d)) for d in golden_dirs(golden)] if golden else []
    if model:
        checkpoints.append((Path(model).name or model, model, random_prompt(model, prompt_len)))
    results = {}
    for name, source, prompt in checkpoints:
        results[name] = r = checkpoint_quality(source, prompt)
        print_table(f"quality against float32, {name} ({r['positions']} positions, teacher-forced)", [
            *((f"{p} KL / top-1", f"{r[p]['kl']:.3g} / {r[p]['top1']:.3f}") for p in QUALITY_PRECISIONS),
            ("int8 KL / bf16 KL", r.get("int8_kl_over_bf16_kl")),
        ])
    return {"mode": "quality", "checkpoints": results}
