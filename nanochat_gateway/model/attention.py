"""Attention over the slot KV cache for a packed step: decode groups and prefill chunks.

Masks depend only on positions and the layer's window, so each is built once per step
(per group or segment and window) and reused by every layer with that window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanochat_gateway.model.step import DecodeGroup, PrefillSegment, StepBatch


def window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """Boolean mask (len(q_pos), len(k_pos)): causal, and at most `window` positions back."""
    delta = q_pos[:, None] - k_pos[None, :]
    return (delta >= 0) & (delta <= window)


class StepAttention:
    """Per-step attention plan: builds masks on first use, then runs every layer."""

    def __init__(self, batch: StepBatch, n_head: int, head_dim: int):
        self.batch, self.n_head, self.head_dim = batch, n_head, head_dim
        self._decode_masks: dict[tuple[int, int], tuple[int, torch.Tensor | None]] = {}
        self._prefill_masks: dict[tuple[int, int], tuple[int, torch.Tensor | None]] = {}

    def __call__(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, window: int) -> torch.Tensor:
        """q (N, H, D) for the packed tokens -> attention output (N, H*D)."""
        parts = [self._decode(q, kc, vc, g_no, group, window)
                 for g_no, group in enumerate(self.batch.decode_groups)]
        parts += [self._prefill(q, kc, vc, s_no, seg, window) for s_no, seg in enumerate(self.batch.prefill)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def _decode(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, g_no: int, group: DecodeGroup, window: int) -> torch.Tensor:
        key = (g_no, window)
        if key not in self._decode_masks:
            self._decode_masks[key] = self._decode_mask(group, window, q.device)
        lo, mask = self._decode_masks[key]
        hi = group.max_pos + 1
        k = kc[group.slot_lo : group.slot_hi, :, lo:hi]
        v = vc[group.slot_lo : group.slot_hi, :, lo:hi]
        rows = q[group.first : group.last].to(k.dtype)
        if group.dense:
            y = F.scaled_dot_product_attention(rows[:, :, None], k, v, attn_mask=mask, enable_gqa=True)
            return y.reshape(group.last - group.first, -1)
        # Idle slots inside the range get a zero query; their outputs are dropped.
        local = self.batch.slots[group.first : group.last] - group.slot_lo
        qf = rows.new_zeros(group.slot_hi - group.slot_lo, self.n_head, 1, self.head_dim)
        qf[local, :, 0] = rows
        y = F.scaled_dot_product_attention(qf, k, v, attn_mask=mask, enable_gqa=True)
        return y[local, :, 0].reshape(group.last - group.first, -1)

    def _decode_mask(self, group: DecodeGroup, window: int, device: torch.device) -> tuple[int, torch.Tensor | None]:
        lo = max(0, group.min_pos - window)
        hi = group.max_pos + 1
        if group.dense and group.min_pos == group.max_pos and group.max_pos - lo <= window:
            return lo, None  # every row sees exactly keys lo..pos: no mask needed
        span_rows = group.slot_hi - group.slot_lo
        # idle slots in the range attend to one key only (avoids all-masked rows)
        row_pos = torch.full((span_rows,), lo, dtype=torch.long, device=device)
        local = self.batch.slots[group.first : group.last] - group.slot_lo
        row_pos[local] = self.batch.positions[group.first : group.last]
        mask = window_mask(row_pos, torch.arange(lo, hi, device=device), window)
        return lo, mask[:, None, None, :]

    def _prefill(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, s_no: int, seg: PrefillSegment, window: int) -> torch.Tensor:
        key = (s_no, window)
        end = seg.start + seg.length
        if key not in self._prefill_masks:
            lo = max(0, seg.start - window)
            if seg.start == 0 and window >= seg.length - 1:
                self._prefill_masks[key] = (0, None)  # plain causal from position 0
            else:
                q_pos = torch.arange(seg.start, end, device=q.device)
                k_pos = torch.arange(lo, end, device=q.device)
                self._prefill_masks[key] = (lo, window_mask(q_pos, k_pos, window))
        lo, mask = self._prefill_masks[key]
        k = kc[seg.slot : seg.slot + 1, :, lo:end]
        v = vc[seg.slot : seg.slot + 1, :, lo:end]
        qs = q[seg.offset : seg.offset + seg.length].transpose(0, 1)[None].to(k.dtype)  # (1, H, T, D)
        if mask is None:
            y = F.scaled_dot_product_attention(qs, k, v, is_causal=True, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, enable_gqa=True)
        return y[0].transpose(0, 1).reshape(seg.length, -1)
