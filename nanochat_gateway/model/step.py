"""StepBatch: one continuous-batching step, packed for forward_step.

Decode rows (one token each, every row at its own position) come first, then prefill
chunks. Decode attention reads the KV cache through strided views of contiguous slot
ranges, never gathering it; rows are split into a few such ranges ("decode groups") so
that a short row next to a long one does not attend over the long one's whole span:
attention reads cost (rows in range) x (longest position in range), and each extra
group costs one more kernel call per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# One extra attention call per layer costs about as much as reading this many
# (row, position) key/value pairs; used to decide when splitting rows pays off.
GROUP_CALL_COST = 96
MAX_GROUP_ROWS = 32  # bounds the planning work per step


@dataclass
class PrefillSegment:
    slot: int
    start: int  # position of the segment's first token
    length: int
    offset: int  # index of the first token in the packed batch


@dataclass
class DecodeGroup:
    """Decode rows[first:last] whose slots lie in [slot_lo, slot_hi)."""

    first: int
    last: int
    slot_lo: int
    slot_hi: int
    min_pos: int
    max_pos: int

    @property
    def dense(self) -> bool:
        """Every slot in the range decodes, in order: queries need no scatter."""
        return self.slot_hi - self.slot_lo == self.last - self.first


def plan_decode_groups(slots: list[int], positions: list[int]) -> list[DecodeGroup]:
    """Split slot-ordered decode rows into contiguous groups minimising estimated cost."""
    n = len(slots)
    if n == 0:
        return []
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        top = 0
        for i in range(j - 1, max(-1, j - 1 - MAX_GROUP_ROWS), -1):
            top = max(top, positions[i])
            cost = best[i] + GROUP_CALL_COST + (slots[j - 1] - slots[i] + 1) * (top + 1)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append(DecodeGroup(i, j, slots[i], slots[j - 1] + 1, min(positions[i:j]), max(positions[i:j])))
        j = i
    return groups[::-1]


@dataclass
class StepBatch:
    """One continuous-batching step, packed: decode rows first, then prefill segments."""

    tokens: torch.Tensor  # (N,) token ids
    positions: torch.Tensor  # (N,) absolute position of each token
    slots: torch.Tensor  # (N,) KV slot of each token
    n_decode: int  # tokens[:n_decode] are single-token rows, in increasing slot order
    decode_groups: list[DecodeGroup]
    prefill: list[PrefillSegment]
    segment_first: torch.Tensor  # indices of each row's first token in this step
    segment_first_has_prev: torch.Tensor  # True where that first token's position > 0
    segment_last: torch.Tensor  # indices of each row's last token (smear state to keep)
    logit_index: torch.Tensor  # which packed tokens need logits, in output order

    @classmethod
    def build(
        cls,
        decode: list[tuple[int, int, int]],
        prefill: list[tuple[int, int, list[int]]],
        logits_for: list[int],
        device: torch.device | str = "cpu",
        every_position: list[int] | None = None,
    ) -> StepBatch:
        """Pack a step.

        decode: (slot, position, token) per decoding row.
        prefill: (slot, start_position, tokens) per prompt chunk.
        logits_for: row numbers (decode rows in the order given, then prefill segments)
        whose last token needs logits, in the order the caller wants them back.
        every_position: indexes into ``prefill`` of chunks whose every token needs logits (to
        score a prompt); those rows follow the ``logits_for`` ones, chunk after chunk.
        """
        order = sorted(range(len(decode)), key=lambda r: decode[r][0])  # slot order for grouping
        rank = {r: k for k, r in enumerate(order)}
        decode_sorted = [decode[r] for r in order]
        slots = [s for s, _, _ in decode_sorted]
        positions = [p for _, p, _ in decode_sorted]
        tokens = [t for _, _, t in decode_sorted]
        segments = []
        firsts = list(range(len(decode)))
        lasts = list(range(len(decode)))
        for slot, start, chunk in prefill:
            offset = len(tokens)
            segments.append(PrefillSegment(slot, start, len(chunk), offset))
            tokens.extend(chunk)
            positions.extend(range(start, start + len(chunk)))
            slots.extend([slot] * len(chunk))
            firsts.append(offset)
            lasts.append(offset + len(chunk) - 1)
        n_dec = len(decode)
        row_last = [rank[r] if r < n_dec else lasts[r] for r in logits_for]
        for k in every_position or ():
            segment = segments[k]
            row_last.extend(range(segment.offset, segment.offset + segment.length))

        def as_long(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.long, device=device)

        return cls(
            tokens=as_long(tokens),
            positions=as_long(positions),
            slots=as_long(slots),
            n_decode=n_dec,
            decode_groups=plan_decode_groups(slots[:n_dec], positions[:n_dec]),
            prefill=segments,
            segment_first=as_long(firsts),
            segment_first_has_prev=torch.tensor([positions[i] > 0 for i in firsts], dtype=torch.bool,
                                                device=device),
            segment_last=as_long(lasts),
            logit_index=as_long(row_last),
        )
