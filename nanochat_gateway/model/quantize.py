"""int8 weights for the CPU: linear layers that read a quarter of float32's bytes.

Notable features:
- weights: int8, symmetric, one scale per output channel, computed at load time from the
  checkpoint and packed once for fbgemm (PyTorch's own x86 int8 GEMM, VNNI when present)
- activations: each row is scaled to its own peak and rounded to integers on every call, so
  a row's output does not depend on what else shares the step; fbgemm's dynamic linear then
  takes those integers losslessly. Where 8 bits are too coarse, the rounding error is sent as
  a second row of 8-bit "digits" through the same product: the weights are still read once,
  and the activations carry about 15 bits
- which layers: attention (c_q, c_k, c_v, c_proj), MLP (c_fc, c_proj) and the lm_head;
  embeddings, norms, gates, lambdas, rotary tables and the KV cache are left as they are
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from nanochat_gateway.model.device import cpu_flags

QUANTIZE_MODES = ("none", "int8")
# Module names (suffixes) whose weights become int8; ve_gate and smear_gate are too small to matter.
INT8_LAYERS = ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head")
# Layers whose input is never negative (relu(x)^2): their 8-bit grid spans [0, peak], not [-peak, peak].
NONNEGATIVE_INPUT = ("mlp.c_proj",)
# Layers whose activations go through the product as two 8-bit digits (about 15 bits). On the d20
# preset, 8-bit activations everywhere made int8's KL from float32 2.3x bf16's; two digits for
# the MLP bring it to 1.55x (1.2x with every layer) for 1.55x the multiply work, which only
# batches large enough to be compute-bound notice (see docs/deploy.md).
TWO_DIGIT_LAYERS = ("mlp.c_fc", "mlp.c_proj")
_TINY = 1e-30


class QuantizationError(ValueError):
    """int8 was asked for where it cannot run; the message says what to change."""


def check_int8_supported(device: torch.device) -> None:
    """Raise QuantizationError unless int8 linear layers can run on `device`."""
    if device.type != "cpu":
        raise QuantizationError(
            f"quantize = 'int8' runs on the CPU only, not on {device}; serve on a GPU with "
            "quantize = 'none' (bf16 there is fast), or set devices = ['cpu']"
        )
    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm") or not hasattr(torch, "quantize_per_channel"):
        raise QuantizationError(
            f"quantize = 'int8' needs PyTorch's x86 int8 kernels (fbgemm); this build's quantized "
            f"engine is {engine!r}"
        )


def cpu_has_vnni() -> bool:
    """VNNI accumulates u8 x s8 products straight into int32, so all 8 activation bits are safe."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


class Int8Linear(nn.Module):
    """y = x @ W.T for float x, with W held as int8 plus one float scale per output row.

    Each input row is scaled to the integer grid [-L, L] (L = 127 with VNNI), rounded, and
    handed to fbgemm as exact integers; with ``digits=2`` the rounding error is scaled up and
    sent as a second row through the same product, so the activations carry about 15 bits.
    An extra pin row holding -(L+1) and L makes fbgemm choose scale 1 and quantize losslessly.
    """

    pin: torch.Tensor
    row_sums: torch.Tensor

    def __init__(self, packed: Any, row_sums: torch.Tensor, in_features: int, out_features: int, *,
                 nonnegative_input: bool = False, digits: int = 1, reduce_range: bool = False) -> None:
        super().__init__()
        self.packed = packed  # fbgemm's packed weights (a torch script object, not a tensor)
        self.in_features, self.out_features = in_features, out_features
        self.nonnegative_input, self.digits = nonnegative_input, digits
        # Without VNNI, fbgemm sums pairs of u8 x s8 products in int16, which 8-bit inputs can
        # saturate; 7-bit inputs cannot.
        self.reduce_range = reduce_range
        self.level = 63 if reduce_range else 127
        pin = torch.zeros(1, in_features)
        pin[0, 0], pin[0, min(1, in_features - 1)] = -(self.level + 1.0), float(self.level)
        self.register_buffer("pin", pin, persistent=False)
        # sum over k of the int8 weights (dequantized): shifts a nonnegative input back from its grid
        self.register_buffer("row_sums", row_sums, persistent=False)

    @classmethod
    def from_float(cls, weight: torch.Tensor, *, nonnegative_input: bool = False, digits: int = 1) -> Int8Linear:
        """Quantize a float (out_features, in_features) weight; the float tensor is not kept."""
        w = weight.detach().to(device="cpu", dtype=torch.float32)
        # two reductions rather than abs().amax(): no temporary the size of the weight
        scales = (torch.maximum(w.amax(dim=1), w.amin(dim=1).neg_()) / 127).clamp_min_(_TINY).double()
        zero_points = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # torch 2.13 deprecates qint8 tensors (pytorch#184982), but fbgemm's packing still
            # takes one, and fbgemm's int8 GEMM is the fastest CPU kernel PyTorch ships.
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
            q = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
        del w
        row_sums = (q.int_repr().sum(dim=1, dtype=torch.int64).double() * scales).float()
        packed = torch.ops.quantized.linear_prepack(q, None)
        return cls(packed, row_sums, weight.shape[1], weight.shape[0], nonnegative_input=nonnegative_input,
                   digits=digits, reduce_range=not cpu_has_vnni())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        n = rows.shape[0]
        if n == 0:  # a prefill step that needs no logits yet
            return x.new_empty(*x.shape[:-1], self.out_features)
        level = self.level
        # abs().amax() rather than vector_norm(ord=inf): 10x faster for these shapes on the CPU
        peak = rows.abs().amax(dim=1, keepdim=True).clamp_min_(_TINY)
        if self.nonnegative_input:  # [0, peak] onto all 2L+2 levels, shifted to [-(L+1), L]
            span = 2 * level + 1
            grid = rows.mul(span / peak)
            first = grid.round().sub_(level + 1)
            error = grid.sub_(first).sub_(level + 1)
        else:
            span = level
            grid = rows.mul(level / peak)
            first = grid.round()
            error = grid.sub_(first)
        parts = [first]
        if self.digits == 2:  # |error| <= 1/2, so error * 2L is again on [-L, L]
            parts.append(error.mul_(2 * level).round_())
        y: torch.Tensor = torch.ops.quantized.linear_dynamic(torch.cat((*parts, self.pin)), self.packed,
                                                             self.reduce_range)
        out = y[:n]
        if self.digits == 2:
            out = out.add_(y[n : 2 * n], alpha=1 / (2 * level))
        if self.nonnegative_input:
            out = out.add_(self.row_sums, alpha=level + 1)
        out = out.mul_(peak / span)
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    @property
    def nbytes(self) -> int:
        """Memory of the packed weights: one byte per weight plus scale, offset and row sum per row."""
        return self.in_features * self.out_features + 12 * self.out_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, digits={self.digits}"


def int8_layer_names(model: nn.Module) -> list[str]:
    """Names of the linear layers that int8 replaces, in module order."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear | Int8Linear) and name.endswith(INT8_LAYERS)]


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_linears(model: nn.Module, weights: dict[str, torch.Tensor], *,
                     released: Callable[[torch.Tensor], None] | None = None) -> None:
    """Swap each int8 layer of `model` for an Int8Linear built from `weights[name + '.weight']`.

    One layer at a time, so at most one float weight is held in full precision at once;
    `released` is called with each float weight once it has been quantized.
    """
    for name in int8_layer_names(model):
        weight = weights[f"{name}.weight"]
        layer = Int8Linear.from_float(weight, nonnegative_input=name.endswith(NONNEGATIVE_INPUT),
                                      digits=2 if name.endswith(TWO_DIGIT_LAYERS) else 1)
        replace_module(model, name, layer)
        if released is not None:
            released(weight)


def _weight_groups(model: nn.Module) -> Iterator[tuple[str, int, int]]:
    """(kind, numel, out_rows) for every weight: kind is "int8", "embedding" or "other"."""
    int8_names = set(int8_layer_names(model))
    for name, module in model.named_modules():
        if name in int8_names:
            yield "int8", module.in_features * module.out_features, module.out_features
        elif isinstance(module, nn.Embedding):
            yield "embedding", module.weight.numel(), 0
        else:
            for p in module.parameters(recurse=False):
                yield "other", p.numel(), 0


def weight_footprints(model: nn.Module) -> dict[str, int]:
    """Bytes the weights take when served in float32, in bfloat16, and with int8.

    The int8 layout is the default one: int8 linear layers (with a scale and an offset per row),
    bfloat16 embedding tables and float32 for the rest.
    """
    out = {"float32": 0, "bfloat16": 0, "int8": 0}
    for kind, numel, rows in _weight_groups(model):
        out["float32"] += 4 * numel
        out["bfloat16"] += 2 * numel
        out["int8"] += numel + 12 * rows if kind == "int8" else (2 if kind == "embedding" else 4) * numel
    return out


def loaded_weight_bytes(model: nn.Module) -> int:
    """Bytes the weights of `model` take as loaded (parameters plus packed int8 layers)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total + sum(m.nbytes for m in model.modules() if isinstance(m, Int8Linear))


__all__ = [
    "INT8_LAYERS", "QUANTIZE_MODES", "Int8Linear", "QuantizationError", "check_int8_supported",
    "int8_layer_names", "loaded_weight_bytes", "quantize_linears", "weight_footprints",
]
