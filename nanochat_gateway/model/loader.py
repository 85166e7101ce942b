"""``load_model``: from a source string to a ready-to-serve model, tokenizer and facts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanochat_gateway.model.architectures import (
    ArchitectureError,
    ArchitectureSpec,
    detect_architecture,
    resolve_spec,
)
from nanochat_gateway.model.checkpoint import (
    CheckpointError,
    CheckpointFiles,
    find_checkpoint,
    read_meta,
    read_state_dict,
)
from nanochat_gateway.model.device import DtypeChoice, choose_dtype, kv_cache_dtype
from nanochat_gateway.model.gpt import GPT, ModelConfig
from nanochat_gateway.model.tokenizer import NanochatTokenizer, TokenizerError, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to serve, with everything known about where it came from."""

    model: GPT
    tokenizer: NanochatTokenizer
    config: ModelConfig
    architecture: str  # the nanochat architecture generation, e.g. "2026-07"
    spec: ArchitectureSpec
    meta: dict[str, Any]
    files: CheckpointFiles
    device: torch.device
    dtype: torch.dtype
    source: str = ""
    is_demo: bool = False
    dtype_reason: str = ""

    @property
    def kv_bytes_per_token(self) -> int:
        return self.config.kv_bytes_per_token(kv_cache_dtype(self.device, self.dtype))

    def describe(self) -> dict[str, Any]:
        """JSON-safe facts for `inspect`, /stats and /v1/models."""
        c = self.config
        return {
            "source": self.source,
            "generation": self.architecture,
            "generation_summary": self.spec.summary,
            "step": self.files.step,
            "layout": self.files.layout,
            "model_path": str(self.files.model_path),
            "config": {
                "sequence_len": c.sequence_len, "vocab_size": c.vocab_size, "n_layer": c.n_layer,
                "n_head": c.n_head, "n_kv_head": c.n_kv_head, "n_embd": c.n_embd,
                "window_pattern": c.window_pattern,
            },
            "windows": self.model.windows,
            "softcap": self.spec.softcap,
            "parameters": self.model.num_params(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "dtype_reason": self.dtype_reason,
            "device": str(self.device),
            "kv_cache_bytes_per_token": self.kv_bytes_per_token,
            "demo": self.is_demo,
        }


def build_model(
    state_dict: dict[str, torch.Tensor],
    config: ModelConfig,
    spec: ArchitectureSpec,
    *,
    device: torch.device,
    dtype: torch.dtype,
    model_path: Path,
    rotary_len: int | None = None,
) -> GPT:
    """Check every key and shape against the architecture, then load in the serving dtype."""
    with torch.device("meta"):
        model = GPT(config, spec, rotary_len=rotary_len)
    expected = model.state_dict()
    weights = dict(state_dict)
    if spec.resid_lambdas:
        # As nanochat does for checkpoints saved before these scalars existed: neutral values.
        weights.setdefault("resid_lambdas", torch.ones(config.n_layer))
        weights.setdefault("x0_lambdas", torch.zeros(config.n_layer))
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key, ref in expected.items():
        if key in weights and tuple(weights[key].shape) != tuple(ref.shape):
            problems.append(f"{key} has shape {tuple(weights[key].shape)}, expected {tuple(ref.shape)}")
    if problems:
        raise CheckpointError(
            f"{model_path}: does not match generation {spec.name} with {config}: " + "; ".join(problems)
        )
    # One conversion at load: the forward never casts weights again.
    converted = {k: weights[k].to(device=device, dtype=dtype) for k in expected}
    model.load_state_dict(converted, strict=True, assign=True)
    model.init_rotary()
    model.eval().requires_grad_(False)
    return model


def load_model(
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    *,
    architecture: str = "auto",
    softcap: float | None = None,
    checkpoint_kind: str = "sft",
    tag: str | None = None,
    step: int | None = None,
    rotary_len: int | None = None,
) -> LoadedModel:
    """Load a nanochat checkpoint of any generation.

    source: a flat directory, a nanochat base dir, or ``hf:owner/repo[@revision]``.
    dtype: "float32", "bfloat16", "float16", "auto" or a torch.dtype.
    Raises CheckpointError / TokenizerError / ArchitectureError with a message naming the file.
    """
    device = torch.device(device)
    source_str = str(source)
    if source_str.startswith("hf:"):
        from nanochat_gateway.model.hub import download_checkpoint

        local = download_checkpoint(source_str, kind=checkpoint_kind, tag=tag, step=step)
    else:
        local = Path(source_str).expanduser()
    files = find_checkpoint(local, kind=checkpoint_kind, tag=tag, step=step)
    meta = read_meta(files.meta_path)
    try:
        config = ModelConfig.from_meta(meta["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{files.meta_path}: bad model_config ({exc})") from None
    tokenizer = load_tokenizer(files.tokenizer_path)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{files.tokenizer_path}: tokenizer has {tokenizer.vocab_size} tokens but "
            f"{files.meta_path.name} says vocab_size={config.vocab_size}; they must come from the same run"
        )
    state_dict = read_state_dict(files.model_path)
    try:
        name = detect_architecture(state_dict, meta["model_config"]) if architecture == "auto" else architecture
        spec = resolve_spec(name, softcap=softcap)
    except ArchitectureError as exc:
        raise CheckpointError(f"{files.model_path}: {exc}") from None
    choice = choose_dtype(dtype, device, config.n_embd) if isinstance(dtype, str) else DtypeChoice(dtype, "given")
    torch_dtype = choice.dtype
    model = build_model(
        state_dict, config, spec, device=device, dtype=torch_dtype,
        model_path=files.model_path, rotary_len=rotary_len,
    )
    user_config = meta.get("user_config")
    is_demo = isinstance(user_config, dict) and bool(user_config.get("demo"))
    log.info(
        "loaded %s (generation %s, step %d, %s [%s], %s)%s", files.model_path, spec.name, files.step,
        str(torch_dtype).removeprefix("torch."), choice.reason, device,
        " [DEMO MODEL: random weights]" if is_demo else "",
    )
    return LoadedModel(
        model=model, tokenizer=tokenizer, config=config, architecture=spec.name, spec=spec, meta=meta,
        files=files, device=device, dtype=torch_dtype, source=source_str, is_demo=is_demo,
        dtype_reason=choice.reason,
    )


__all__ = ["CheckpointError", "ArchitectureError", "LoadedModel", "TokenizerError", "build_model", "load_model"]
