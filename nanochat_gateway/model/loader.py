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
    release_pages,
)
from nanochat_gateway.model.device import DTYPES, DtypeChoice, choose_dtype, kv_cache_dtype
from nanochat_gateway.model.gpt import GPT, ModelConfig
from nanochat_gateway.model.quantize import (
    QUANTIZE_MODES,
    QuantizationError,
    check_int8_supported,
    loaded_weight_bytes,
    quantize_linears,
    weight_footprints,
)
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
    dtype: torch.dtype  # activations, and every weight that is neither int8 nor an embedding table
    source: str = ""
    is_demo: bool = False
    dtype_reason: str = ""
    quantize: str = "none"  # "int8": the attention, MLP and lm_head weights are int8
    embedding_dtype: torch.dtype | None = None  # the embedding tables' dtype when it is not `dtype`

    @property
    def kv_bytes_per_token(self) -> int:
        return self.config.kv_bytes_per_token(kv_cache_dtype(self.device, self.dtype))

    @property
    def precision(self) -> str:
        """How the weights are held, as one token: "float32", "bfloat16", or "int8-<embedding dtype>"."""
        if self.quantize == "none":
            return _dtype_name(self.dtype)
        return f"{self.quantize}-{_dtype_name(self.embedding_dtype or self.dtype)}"

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
            "dtype": _dtype_name(self.dtype),
            "dtype_reason": self.dtype_reason,
            "quantize": self.quantize,
            "embedding_dtype": _dtype_name(self.embedding_dtype or self.dtype),
            "precision": self.precision,
            "weight_bytes": loaded_weight_bytes(self.model),
            "weight_bytes_by_precision": weight_footprints(self.model),
            "device": str(self.device),
            "kv_cache_bytes_per_token": self.kv_bytes_per_token,
            "demo": self.is_demo,
        }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_model(
    state_dict: dict[str, torch.Tensor],
    config: ModelConfig,
    spec: ArchitectureSpec,
    *,
    device: torch.device,
    dtype: torch.dtype,
    model_path: Path,
    rotary_len: int | None = None,
    quantize: str = "none",
    embedding_dtype: torch.dtype | None = None,
    release_source: bool = False,
) -> GPT:
    """Check every key and shape against the architecture, then load in the serving dtype.

    quantize="int8" builds the attention, MLP and lm_head layers as int8 (float32 compute);
    embedding_dtype stores the embedding tables in another dtype than `dtype`.
    release_source: the state dict was read with mmap; reclaim each tensor's pages once converted.
    """
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
    released = release_pages if release_source else None
    if quantize == "int8":
        # Swapped first, so the float copies of these weights are never made.
        quantize_linears(model, weights, released=released)
    tables = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    # One conversion at load: the forward never casts weights again.
    converted = {}
    for key in model.state_dict():
        source = weights[key]
        converted[key] = source.to(device=device, dtype=embedding_dtype if key in tables and embedding_dtype else dtype)
        if released is not None and converted[key].data_ptr() != source.data_ptr():
            released(source)
    model.load_state_dict(converted, strict=True, assign=True)
    model.compute_dtype = dtype
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
    quantize: str = "none",
) -> LoadedModel:
    """Load a nanochat checkpoint of any generation.

    source: a flat directory, a nanochat base dir, or ``hf:owner/repo[@revision]``.
    dtype: "float32", "bfloat16", "float16", "auto" or a torch.dtype.
    quantize: "none", or "int8" (CPU only): int8 attention, MLP and lm_head weights computing in
    float32, with the embedding tables in `dtype` ("auto": bfloat16).
    Raises CheckpointError / TokenizerError / ArchitectureError with a message naming the file,
    QuantizationError when int8 cannot run on `device`.
    """
    device = torch.device(device)
    if quantize not in QUANTIZE_MODES:
        raise QuantizationError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    if quantize == "int8":
        check_int8_supported(device)
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
    choice, embedding_dtype = _serving_dtypes(dtype, device, config.n_embd, quantize)
    torch_dtype = choice.dtype
    model = build_model(
        state_dict, config, spec, device=device, dtype=torch_dtype, model_path=files.model_path,
        rotary_len=rotary_len, quantize=quantize, embedding_dtype=embedding_dtype, release_source=True,
    )
    user_config = meta.get("user_config")
    is_demo = isinstance(user_config, dict) and bool(user_config.get("demo"))
    loaded = LoadedModel(
        model=model, tokenizer=tokenizer, config=config, architecture=spec.name, spec=spec, meta=meta,
        files=files, device=device, dtype=torch_dtype, source=source_str, is_demo=is_demo,
        dtype_reason=choice.reason, quantize=quantize, embedding_dtype=embedding_dtype,
    )
    log.info(
        "loaded %s (generation %s, step %d, %s [%s], %s)%s", files.model_path, spec.name, files.step,
        loaded.precision, choice.reason, device, " [DEMO MODEL: random weights]" if is_demo else "",
    )
    return loaded


def _serving_dtypes(dtype: str | torch.dtype, device: torch.device, n_embd: int,
                    quantize: str) -> tuple[DtypeChoice, torch.dtype | None]:
    """(compute dtype and why, embedding-table dtype or None when it is the same)."""
    if quantize == "int8":
        # fbgemm's int8 kernels take float32; the tables are only looked up, so bf16 costs no speed
        # and halves their memory (GPU-trained checkpoints store them in bf16 anyway).
        tables = torch.bfloat16 if dtype == "auto" else DTYPES[dtype] if isinstance(dtype, str) else dtype
        return DtypeChoice(torch.float32, "int8 linear layers compute in float32"), (
            None if tables == torch.float32 else tables)
    if isinstance(dtype, str):
        return choose_dtype(dtype, device, n_embd), None
    return DtypeChoice(dtype, "given"), None


__all__ = [
    "ArchitectureError", "CheckpointError", "LoadedModel", "QuantizationError", "TokenizerError", "build_model",
    "load_model",
]
