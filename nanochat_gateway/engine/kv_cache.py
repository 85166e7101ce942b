"""SlotKVCache: a preallocated KV cache of fixed slots, one per running sequence.

Layout (n_layer, n_slots, n_kv_head, max_seq_len, head_dim): for one layer, a range of
slots forms a strided view that batched decode attention reads without a gather. A
sequence stays in its slot from admission to the end, and its KV stays there after it
finishes, for a later prompt with the same prefix to reuse (prefix_cache.py).
"""

from __future__ import annotations

import math
import mmap

import torch

from nanochat_gateway.model.gpt import ModelConfig


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A zero tensor whose pages are only touched when used, on the CPU.

    torch.zeros writes every byte up front (seconds for a multi-GB cache); an anonymous
    mapping gets zero pages from the OS lazily. Zeros, not garbage, matter: masked keys still
    take part in p @ V, and 0 x NaN would poison a row. Huge pages are declined: a slot's first
    positions would fault in 2 MiB at a time (numpy's zeros asks for them), and a slot's
    prompt of 300 tokens then made the whole slot resident, 7 times the memory it used.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if torch.device(device).type != "cpu" or nbytes == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    buffer = mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux only; elsewhere pages stay small anyway
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).view(shape)


class SlotKVCache:
    def __init__(
        self,
        config: ModelConfig,
        n_slots: int,
        max_seq_len: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        smear: bool = False,
    ):
        self.n_slots, self.max_seq_len = n_slots, max_seq_len
        shape = (config.n_layer, n_slots, config.n_kv_head, max_seq_len, config.head_dim)
        self.k = _zeros(shape, dtype, device)
        self.v = _zeros(shape, dtype, device)
        # Smear mixes the previous token's embedding in, so each slot remembers its last one.
        self.prev_embed = torch.zeros(n_slots, config.n_embd, dtype=dtype, device=device) if smear else None

    @property
    def nbytes(self) -> int:
        extra = self.prev_embed.nbytes if self.prev_embed is not None else 0
        return self.k.nbytes + self.v.nbytes + extra

    def copy(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot src into slot dst (n > 1 forks, a reused prefix)."""
        if src == dst:
            return
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]
        if self.prev_embed is not None:
            self.prev_embed[dst] = self.prev_embed[src]
