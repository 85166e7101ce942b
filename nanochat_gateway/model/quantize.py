"""int8 weights for the CPU: linear layers that read a quarter of float32's bytes.

Notable features:
- weights: int8, symmetric, one scale per output channel, computed at load time from the
  checkpoint and packed once for fbgemm (PyTorch's own x86 int8 GEMM, VNNI when present)
- activations: each row is scaled to its own peak and rounded to integers on every call, so
  a row's output does not depend on what else shares the step; fbgemm's dynamic linear then
  takes those integers losslessly. 8 bits are too coarse, so the rounding error is sent as a
  second row of 8-bit "digits" through the same product: the weights are still read once,
  and the activations carry about 15 bits
- rounding: to nearest, except that each row's sum is kept (sum_preserving_round)
- which layers: attention (c_q, c_k, c_v, c_proj), MLP (c_fc, c_proj) and the lm_head;
  embeddings, norms, gates, lambdas, rotary tables and the KV cache are left as they are.
  c_q, c_k and c_v read the same input, so they become one product ("attn.qkv")
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
INT8_LAYERS = ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head", "attn.qkv")
# Served as one Int8Linear per layer, "attn.qkv" (their rows stacked in this order): the shared
# input is rounded once, and one GEMM three times as wide costs less than three calls (at batch 1
# the per-call work is most of a small product's time).
QKV_PARTS = ("c_q", "c_k", "c_v")
# Layers whose input is never negative (relu(x)^2): their 8-bit grid spans [0, peak], not [-peak, peak].
NONNEGATIVE_INPUT = ("mlp.c_proj",)
# Activations go through every product as two 8-bit digits (about 15 bits). With one digit,
# int8's KL from float32 was 3.0 to 4.0 times bf16's on the golden checkpoints; with two, 1.6 to
# 2.2 times (1.1 on the d20 preset). At batch 1 the second row is free (the step waits on reading
# the weights); at batch 16 the products are compute-bound and it costs about a fifth of the
# step (see docs/deploy.md).
ACTIVATION_DIGITS = 2
_TINY = 1e-30
_ROUNDING_CHUNK_ROWS = 4096  # bounds the temporaries of rounding a 65536-row lm_head


def sum_preserving_round(t: torch.Tensor) -> torch.Tensor:
    """Round each row of `t` (already in steps, |t| <= 127) to int8 with the row's sum kept.

    Rounding each weight to nearest leaves a row-sum error of about sqrt(in_features / 12)
    steps, and that error times the input's mean reaches the output whole: for the MLP's
    never-negative inputs it was the largest part of int8's error. Rounding the weights whose
    fractions lie nearest one half the other way instead brings the row's sum within half a step
    of the float one, and costs each of those weights almost nothing (0.5 - f becomes 0.5 + f).
    """
    q = t.round()
    fraction = t - q  # in [-0.5, 0.5]: how far each weight was rounded down (> 0) or up (< 0)
    shortfall = fraction.sum(dim=1).round().long()  # steps the row's integer sum lacks
    most = int(shortfall.abs().max()) if shortfall.numel() else 0
    if most:
        ups, up_idx = fraction.topk(most, dim=1)
        downs, down_idx = fraction.topk(most, dim=1, largest=False)
        rank = torch.arange(most)
        q.scatter_add_(1, up_idx, ((rank < shortfall[:, None]) & (ups > 0)).float())
        q.scatter_add_(1, down_idx, -((rank < -shortfall[:, None]) & (downs < 0)).float())
    return q.clamp_(-127, 127).to(torch.int8)


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
        scales = (torch.maximum(w.amax(dim=1), w.amin(dim=1).neg_()) / 127).clamp_min_(_TINY)
        if not bool(torch.isfinite(scales).all()):  # a row's peak is NaN or infinite iff the row holds one
            raise QuantizationError("holds NaN or infinite weights, which int8 cannot scale; "
                                    "serve this checkpoint with quantize = 'none'")
        q = torch.empty(w.shape, dtype=torch.int8)
        for lo in range(0, w.shape[0], _ROUNDING_CHUNK_ROWS):
            hi = lo + _ROUNDING_CHUNK_ROWS
            q[lo:hi] = sum_preserving_round(w[lo:hi] / scales[lo:hi, None])
        del w
        scales64 = scales.double()
        with warnings.catch_warnings():
            # torch 2.13 deprecates qint8 tensors (pytorch#184982), but fbgemm's packing still
            # takes one, and fbgemm's int8 GEMM is the fastest CPU kernel PyTorch ships.
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
            qt = torch._make_per_channel_quantized_tensor(q, scales64, torch.zeros(q.shape[0], dtype=torch.long), 0)
        row_sums = (q.sum(dim=1, dtype=torch.int64).double() * scales64).float()
        packed = torch.ops.quantized.linear_prepack(qt, None)
        return cls(packed, row_sums, weight.shape[1], weight.shape[0], nonnegative_input=nonnegative_input,
                   digits=digits, reduce_range=not cpu_has_vnni())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        n = rows.shape[0]
        if n == 0:  # a prefill step that needs no logits yet
            return x.new_empty(*x.shape[:-1], self.out_features)
        level, digits = self.level, self.digits
        # abs().amax() rather than vector_norm(ord=inf): 10x faster for these shapes on the CPU
        peak = rows.abs().amax(dim=1, keepdim=True).clamp_min_(_TINY)
        # What fbgemm gets, written in place: first digits, second digits (if any), the pin row.
        grid = torch.empty(digits * n + 1, self.in_features)
        grid[-1] = self.pin
        first = grid[:n]
        # nonnegative input: [0, peak] onto all 2L+2 levels, shifted to [-(L+1), L] below
        span = 2 * level + 1 if self.nonnegative_input else level
        if digits == 2:  # the rounding error, |error| <= 1/2, times 2L is again on [-L, L]
            second = torch.mul(rows, span / peak, out=grid[n : 2 * n])
            torch.round(second, out=first)
            second.sub_(first).mul_(2 * level).round_()
        else:
            torch.mul(rows, span / peak, out=first).round_()
        if self.nonnegative_input:
            first.sub_(level + 1)
        y: torch.Tensor = torch.ops.quantized.linear_dynamic(grid, self.packed, self.reduce_range)
        out = y[:n]
        if digits == 2:
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

    An attention's c_q, c_k and c_v become one Int8Linear, its ``qkv``. One layer at a time, so
    at most one float weight (or one stacked q, k, v) is held in full precision at once;
    `released` is called with each float weight once it has been quantized.
    """
    for name in int8_layer_names(model):
        try:
            sources = _quantize_layer(model, name, weights)
        except QuantizationError as exc:
            where = f"{name}, c_k or c_v" if name.endswith("attn.c_q") else name
            raise QuantizationError(f"{where}: {exc}") from None
        if released is not None:
            for weight in sources:
                released(weight)


def _quantize_layer(model: nn.Module, name: str, weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Swap in the Int8Linear for `name` (c_q: for c_q, c_k and c_v); the float weights it used."""
    prefix, _, part = name.rpartition(".")
    if part in QKV_PARTS[1:]:
        return []  # quantized with c_q
    if part == QKV_PARTS[0]:
        sources = [weights[f"{prefix}.{p}.weight"] for p in QKV_PARTS]
        layer = Int8Linear.from_float(torch.cat(sources), digits=ACTIVATION_DIGITS)  # from_float makes it float32
        attention = model.get_submodule(prefix)
        for p in QKV_PARTS:
            delattr(attention, p)
        attention.qkv = layer
    else:
        sources = [weights[f"{name}.weight"]]
        layer = Int8Linear.from_float(sources[0], nonnegative_input=name.endswith(NONNEGATIVE_INPUT),
                                      digits=ACTIVATION_DIGITS)
        replace_module(model, name, layer)
    return sources


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
