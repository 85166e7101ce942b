"""Demo checkpoints: small, valid nanochat checkpoints with random weights.

They let the server start with no network and no trained model (the embedded default),
and give the benchmark a model of a known size. The tokenizer is a real byte-level BPE
trained locally on the Python standard library's text, with nanochat's special tokens.
Everything about them says "demo": the meta file, the log, and /v1/models.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanochat_gateway.model.architectures import LATEST_ARCHITECTURE, resolve_spec
from nanochat_gateway.model.bpe_train import demo_corpus, train_bpe
from nanochat_gateway.model.gpt import GPT, ModelConfig
from nanochat_gateway.model.tokenizer import NanochatTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoShape:
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    vocab_size: int
    sequence_len: int
    window_pattern: str = "SSSL"


PRESETS = {
    # the embedded default: quick to build and to run on any CPU
    "tiny": DemoShape(n_layer=4, n_embd=128, n_head=4, n_kv_head=4, vocab_size=4096, sequence_len=2048),
    # the benchmark model named in the engine targets
    "bench": DemoShape(n_layer=8, n_embd=512, n_head=4, n_kv_head=4, vocab_size=32768, sequence_len=2048),
    # a d20-shaped model for load-time and speed measurements (5.6 GB in fp32, 3.4 GB of it
    # value embeddings)
    "d20": DemoShape(n_layer=20, n_embd=1280, n_head=10, n_kv_head=10, vocab_size=65536, sequence_len=2048),
}

DEMO_STEP = 0


def demo_tokenizer(vocab_size: int, cache_dir: Path | None = None) -> NanochatTokenizer:
    """Train (or reuse from cache_dir) the demo BPE tokenizer of a given size."""
    cached = cache_dir / f"tokenizer-{vocab_size}.pkl" if cache_dir else None
    if cached is not None and cached.is_file():
        from nanochat_gateway.model.tokenizer import load_tokenizer

        return load_tokenizer(cached)
    start = time.monotonic()
    # about 256 bytes of text per token: enough distinct pairs to learn every merge
    enc = train_bpe(demo_corpus(max_bytes=max(4 * 2**20, 256 * vocab_size)), vocab_size)
    log.info("trained a %d-token demo tokenizer in %.1fs", vocab_size, time.monotonic() - start)
    tokenizer = NanochatTokenizer.from_encoding(enc)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(cached)
    return tokenizer


@torch.no_grad()
def random_state_dict(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of the current generation, drawn so activations stay in a sane range."""
    spec = resolve_spec(LATEST_ARCHITECTURE)
    model = GPT(config, spec)
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("wte.weight",)) or ".value_embeds." in f".{name}":
            p.copy_(torch.randn(p.shape, generator=g))
        elif name == "resid_lambdas":
            p.fill_(1.0)
        elif name == "x0_lambdas":
            p.fill_(0.1)
        elif name in ("smear_lambda", "backout_lambda"):
            p.fill_(0.2)
        elif p.ndim == 2:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write_demo_checkpoint(
    out_dir: str | Path, shape: DemoShape | str = "tiny", *, seed: int = 0, tokenizer_cache: Path | None = None
) -> Path:
    """Write model_000000.pt, meta_000000.json and tokenizer.pkl (flat layout) into out_dir."""
    shape = PRESETS[shape] if isinstance(shape, str) else shape
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = demo_tokenizer(shape.vocab_size, tokenizer_cache)
    config = ModelConfig(**asdict(shape))
    meta = {
        "step": DEMO_STEP,
        "val_bpb": None,
        "model_config": asdict(config),
        "user_config": {
            "demo": True,
            "note": "nanochat-gateway demo model: RANDOM WEIGHTS, not trained; output is gibberish",
            "seed": seed,
            "generation": LATEST_ARCHITECTURE,
        },
    }
    # Each file is written under a temporary name and renamed into place, the meta file last:
    # a half-written directory never looks complete, and replicas sharing a cache volume that
    # write the same (deterministic) demo model at once cannot corrupt each other's files.
    suffix = f".tmp-{os.getpid()}-{threading.get_ident()}"
    staged = {name: out / f"{name}{suffix}" for name in ("model.pt", "tokenizer.pkl", "meta.json")}
    torch.save(random_state_dict(config, seed), staged["model.pt"])
    tokenizer.save(staged["tokenizer.pkl"])
    staged["meta.json"].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(staged["model.pt"], out / f"model_{DEMO_STEP:06d}.pt")
    os.replace(staged["tokenizer.pkl"], out / "tokenizer.pkl")
    os.replace(staged["meta.json"], out / f"meta_{DEMO_STEP:06d}.json")
    return out


def is_demo_dir(path: Path) -> bool:
    names = (f"meta_{DEMO_STEP:06d}.json", f"model_{DEMO_STEP:06d}.pt", "tokenizer.pkl")
    return all((path / name).is_file() for name in names)
