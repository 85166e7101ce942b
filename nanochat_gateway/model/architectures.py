"""nanochat architecture generations: what changed, and how to tell them apart.

nanochat's GPT changed several times after checkpoints were published. Rather than one
model class per revision, the gateway runs a single GPT (gpt.py) driven by a small
ArchitectureSpec. Each spec records only the differences that change the math:

- rotary base and whether the cos/sin tables were rounded to bfloat16
- the q/k scale applied after QK-norm
- the logit softcap
- per-layer residual / x0 scalars
- value embeddings and the width and scale of their gate
- the rule that turns sequence_len into the short (S) sliding window
- smear and backout
- vocab padding of wte/lm_head rows

The generation is detected from state-dict keys and shapes (see ``detect_architecture``)
and can be overridden in config.toml for what the keys cannot tell.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass(frozen=True)
class ArchitectureSpec:
    """The architecture differences between nanochat revisions."""

    name: str
    summary: str
    rotary_base: float
    bf16_rotary_tables: bool
    qk_scale: float
    softcap: float
    resid_lambdas: bool
    ve_gate_channels: int  # 0 means the generation has no value embeddings
    ve_gate_scale: float
    short_window_divisor: int  # S window = ceil(sequence_len / (128 * divisor)) * 128; 0 = half context
    smear: bool
    backout: bool
    vocab_multiple: int  # wte/lm_head rows are padded to a multiple of this

    @property
    def value_embeds(self) -> bool:
        return self.ve_gate_channels > 0

    def short_window(self, sequence_len: int) -> int:
        if self.short_window_divisor == 0:
            return sequence_len // 2
        tile = 128 * self.short_window_divisor
        return -(-sequence_len // tile) * 128

    def window_sizes(self, n_layer: int, sequence_len: int, pattern: str) -> list[int]:
        """Per-layer attention window: query i sees keys i-w..i. The last layer is always long."""
        pattern = pattern.upper()
        if not pattern or any(c not in "SL" for c in pattern):
            raise ValueError(f"window_pattern must use only 'S' and 'L', got {pattern!r}")
        short = self.short_window(sequence_len)
        sizes = [short if pattern[i % len(pattern)] == "S" else sequence_len for i in range(n_layer)]
        sizes[-1] = sequence_len
        return sizes


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in [
        ArchitectureSpec(
            name="2025-10",
            summary="original d20/d32 release: rotary 10k (bf16 tables), no padding",
            rotary_base=10000.0, bf16_rotary_tables=True, qk_scale=1.0, softcap=15.0,
            resid_lambdas=False, ve_gate_channels=0, ve_gate_scale=0.0, short_window_divisor=0,
            smear=False, backout=False, vocab_multiple=1,
        ),
        ArchitectureSpec(
            name="2025-12",
            summary="as 2025-10 with wte/lm_head padded to a multiple of 64",
            rotary_base=10000.0, bf16_rotary_tables=True, qk_scale=1.0, softcap=15.0,
            resid_lambdas=False, ve_gate_channels=0, ve_gate_scale=0.0, short_window_divisor=0,
            smear=False, backout=False, vocab_multiple=64,
        ),
        ArchitectureSpec(
            name="2026-01",
            summary="sliding windows (S = half context), value embeddings (gate 32ch, 2*sigmoid), resid/x0 scalars",
            rotary_base=10000.0, bf16_rotary_tables=True, qk_scale=1.0, softcap=15.0,
            resid_lambdas=True, ve_gate_channels=32, ve_gate_scale=2.0, short_window_divisor=0,
            smear=False, backout=False, vocab_multiple=64,
        ),
        ArchitectureSpec(
            name="2026-03",
            summary="rotary 100k, qk scale 1.15, value-embedding gate 12ch 3*sigmoid, S = ceil(L/384)*128",
            rotary_base=100000.0, bf16_rotary_tables=False, qk_scale=1.15, softcap=15.0,
            resid_lambdas=True, ve_gate_channels=12, ve_gate_scale=3.0, short_window_divisor=3,
            smear=False, backout=False, vocab_multiple=64,
        ),
        ArchitectureSpec(
            name="2026-07",
            summary="current: qk scale 1.2, S = ceil(L/512)*128, smear and backout",
            rotary_base=100000.0, bf16_rotary_tables=False, qk_scale=1.2, softcap=15.0,
            resid_lambdas=True, ve_gate_channels=12, ve_gate_scale=3.0, short_window_divisor=4,
            smear=True, backout=True, vocab_multiple=64,
        ),
    ]
}

LATEST_ARCHITECTURE = "2026-07"


class ArchitectureError(ValueError):
    """The checkpoint does not look like any known nanochat generation."""


def detect_architecture(state_dict: Mapping[str, torch.Tensor], model_config: Mapping[str, Any]) -> str:
    """Name the generation of a checkpoint from its keys and shapes (keys already unprefixed)."""
    vocab_size = int(model_config["vocab_size"])
    if "smear_gate.weight" in state_dict:
        return "2026-07"
    gate_widths = {t.shape[1] for k, t in state_dict.items() if k.endswith("attn.ve_gate.weight")}
    if gate_widths:
        if gate_widths == {12}:
            return "2026-03"
        if gate_widths == {32}:
            return "2026-01"
        raise ArchitectureError(f"unknown value-embedding gate width(s) {sorted(gate_widths)}")
    wte = state_dict.get("transformer.wte.weight")
    if wte is None:
        raise ArchitectureError("missing transformer.wte.weight: not a nanochat checkpoint")
    # With vocab_size % 64 == 0 the two generations compute the same function.
    return "2025-12" if wte.shape[0] > vocab_size else "2025-10"


def resolve_spec(name: str, *, softcap: float | None = None) -> ArchitectureSpec:
    """Look up a generation by name, applying config overrides the keys cannot reveal."""
    try:
        spec = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise ArchitectureError(f"unknown generation {name!r}; known: {known}") from None
    if softcap is not None:
        spec = replace(spec, softcap=float(softcap))
    return spec
