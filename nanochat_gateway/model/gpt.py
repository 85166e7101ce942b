"""One GPT that serves every nanochat checkpoint generation.

Notable features:
- parameter names equal nanochat's state-dict keys, so checkpoints load with no renaming
- the math of each generation comes from a ArchitectureSpec (architectures.py), not subclasses
- two forwards over the same weights:
  * ``forward(idx)``: the plain causal forward with no cache (parity with nanochat)
  * ``forward_step(batch, cache)``: one step of continuous batching over a slot KV cache,
    where every row sits at its own position (ragged decode rows plus prefill chunks,
    packed into one (N, C) activation so the linear layers see a single matmul)
- sliding windows, value embeddings and smear state are tracked per row, so a row's
  logits do not depend on what else shares the step
- a slot can continue after a reused KV prefix (``resume_slot``): keys and values of a
  prefix depend on that prefix alone, and smear's state is recomputed from its last token
- weights are stored in the serving dtype once; nothing is cast per forward, except
  looked-up embedding rows when the tables are stored narrower than the compute dtype
  (int8 serving keeps them in bf16 and computes in float32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat_gateway.model.architectures import ArchitectureSpec
from nanochat_gateway.model.attention import StepAttention, window_mask
from nanochat_gateway.model.quantize import Int8Linear
from nanochat_gateway.model.step import StepBatch


@dataclass(frozen=True)
class ModelConfig:
    """nanochat's GPTConfig, read from meta_<step>.json."""

    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    window_pattern: str = "L"  # checkpoints older than sliding windows attend over the full context

    @classmethod
    def from_meta(cls, model_config: dict[str, Any]) -> ModelConfig:
        known = {f: model_config[f] for f in cls.__dataclass_fields__ if f in model_config}
        missing = [f for f in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
                   if f not in known]
        if missing:
            raise ValueError(f"model_config is missing {', '.join(missing)}")
        config = cls(**known)
        if config.n_embd % config.n_head or config.n_head % config.n_kv_head:
            raise ValueError("n_embd must divide by n_head and n_head by n_kv_head")
        return config

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def padded_vocab(self, spec: ArchitectureSpec) -> int:
        m = spec.vocab_multiple
        return -(-self.vocab_size // m) * m

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        """Bytes of KV cache one token occupies, over all layers (keys and values)."""
        return self.n_layer * 2 * self.n_kv_head * self.head_dim * dtype.itemsize


class KVStore(Protocol):
    """What forward_step needs from a KV cache (engine/kv_cache.py implements it)."""

    k: torch.Tensor  # (n_layer, n_slots, n_kv_head, max_seq_len, head_dim)
    v: torch.Tensor
    prev_embed: torch.Tensor | None  # (n_slots, n_embd): last normed embedding per slot, for smear


class Linear(nn.Linear):
    """nn.Linear without bias that picks the faster GEMM layout for decode-sized inputs.

    With float32 weights and a handful of rows (a decode step), the CPU BLAS computes
    W @ x.T noticeably faster than x @ W.T (lm_head at 16 rows: about 1.6x, measured with
    `bench`); bf16 and large inputs keep the usual layout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        w = self.weight
        if w.dtype == torch.float32 and w.device.type == "cpu" and 2 <= rows <= 64:
            flat = x.reshape(rows, x.shape[-1])
            return (w @ flat.t()).t().contiguous().view(*x.shape[:-1], w.shape[0])
        return F.linear(x, w)


def norm(x: torch.Tensor) -> torch.Tensor:
    # nanochat's parameter-free RMSNorm (eps = machine epsilon of the dtype)
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Half-split layout, rotating by -theta as nanochat does (only relative angles matter,
    # but the sign must match the trained weights).
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, spec: ArchitectureSpec, has_ve: bool):
        super().__init__()
        c, hd = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hd
        self.c_q = Linear(c, config.n_head * hd, bias=False)
        self.c_k = Linear(c, config.n_kv_head * hd, bias=False)
        self.c_v = Linear(c, config.n_kv_head * hd, bias=False)
        # int8 serving replaces c_q, c_k and c_v by this one product of their stacked weights
        self.qkv: Int8Linear | None = None
        self.qkv_sizes = (config.n_head * hd, config.n_kv_head * hd, config.n_kv_head * hd)
        self.c_proj = Linear(c, c, bias=False)
        self.ve_gate = Linear(spec.ve_gate_channels, config.n_kv_head, bias=False) if has_ve else None
        self.ve_gate_channels = spec.ve_gate_channels
        self.ve_gate_scale = spec.ve_gate_scale
        self.qk_scale = spec.qk_scale

    def project(self, xa: torch.Tensor, ve: torch.Tensor | None, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v for normed input xa of shape (..., C); the last two dims become (heads, head_dim)."""
        lead = xa.shape[:-1]
        if self.qkv is not None:
            q, k, v = self.qkv(xa).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.c_q(xa), self.c_k(xa), self.c_v(xa)
        q = q.view(*lead, self.n_head, self.head_dim)
        k = k.view(*lead, self.n_kv_head, self.head_dim)
        v = v.view(*lead, self.n_kv_head, self.head_dim)
        if self.ve_gate is not None and ve is not None:
            gate = self.ve_gate_scale * torch.sigmoid(self.ve_gate(xa[..., : self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(*lead, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = norm(q), norm(k)
        if self.qk_scale != 1.0:
            q, k = q * self.qk_scale, k * self.qk_scale
        return q, k, v


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.c_proj(F.relu(self.c_fc(x)).square())
        return out


class Block(nn.Module):
    def __init__(self, config: ModelConfig, spec: ArchitectureSpec, has_ve: bool):
        super().__init__()
        self.attn = Attention(config, spec, has_ve)
        self.mlp = MLP(config)


class GPT(nn.Module):
    """nanochat's GPT for every generation. Build on the meta device, then load weights."""

    def __init__(self, config: ModelConfig, spec: ArchitectureSpec, rotary_len: int | None = None):
        super().__init__()
        self.config, self.spec = config, spec
        n_layer = config.n_layer
        padded = config.padded_vocab(spec)
        # value embeddings sit on alternating layers, always including the last one
        self.ve_layers = [i for i in range(n_layer) if spec.value_embeds and i % 2 == (n_layer - 1) % 2]
        blocks = [Block(config, spec, i in self.ve_layers) for i in range(n_layer)]
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(padded, config.n_embd), "h": nn.ModuleList(blocks)})
        self.blocks = blocks  # a plain list (not a registered name), typed for the forwards
        self.lm_head = Linear(config.n_embd, padded, bias=False)
        if spec.resid_lambdas:
            self.resid_lambdas = nn.Parameter(torch.ones(n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(n_layer))
        if spec.value_embeds:
            kv_dim = config.n_kv_head * config.head_dim
            self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(padded, kv_dim) for i in self.ve_layers})
        if spec.smear:
            self.smear_gate = Linear(24, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if spec.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        self.windows = spec.window_sizes(n_layer, config.sequence_len, config.window_pattern)
        self.rotary_len = max(rotary_len or 0, config.sequence_len)
        self.compute_dtype = torch.float32  # activations; the loader sets it with the weights
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    # ------------------------------------------------------------------ set-up
    def init_rotary(self) -> None:
        """Build the rotary tables on the weights' device, in the compute dtype."""
        device, dtype = cast(nn.Embedding, self.transformer["wte"]).weight.device, self.compute_dtype
        hd = self.config.head_dim
        channels = torch.arange(0, hd, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (self.spec.rotary_base ** (channels / hd))
        t = torch.arange(self.rotary_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        cos, sin = freqs.cos(), freqs.sin()
        if self.spec.bf16_rotary_tables:
            # These generations rounded the tables to bf16 even for fp32 compute; the trained
            # weights expect that rounding (3e-3 logit difference otherwise).
            cos, sin = cos.bfloat16(), sin.bfloat16()
        self.cos, self.sin = cos.to(dtype), sin.to(dtype)

    # ------------------------------------------------------------ shared parts
    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        return norm(cast(nn.Embedding, self.transformer["wte"])(idx).to(self.compute_dtype))

    def _smear_gate(self, e: torch.Tensor) -> torch.Tensor:
        return self.smear_lambda * torch.sigmoid(self.smear_gate(e[..., :24]))

    def _pre_block(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        if self.spec.resid_lambdas:
            return self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
        return x

    def _value_embed(self, i: int, idx: torch.Tensor) -> torch.Tensor | None:
        return cast(nn.Embedding, self.value_embeds[str(i)])(idx).to(self.compute_dtype) if i in self.ve_layers else None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.lm_head(norm(x))[..., : self.config.vocab_size]
        # a fresh float32 tensor we own, so the softcap runs in place (no extra vocab-sized passes)
        logits = logits.float() if logits.dtype != torch.float32 else logits.contiguous()
        cap = self.spec.softcap
        return logits.div_(cap).tanh_().mul_(cap)

    def _blocks(self, x: torch.Tensor, idx: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The transformer stack both forwards share; ``attend(layer, q, k, v)`` is how each attends."""
        x0, x_backout = x, None
        for i, block in enumerate(self.blocks):
            x = self._pre_block(i, x, x0)
            q, k, v = block.attn.project(norm(x), self._value_embed(i, idx), cos, sin)
            x = x + block.attn.c_proj(attend(i, q, k, v).to(x.dtype))
            x = x + block.mlp(norm(x))
            if self.spec.backout and i == self.config.n_layer // 2:
                x_backout = x
        if x_backout is not None:
            x = x - self.backout_lambda * x_backout
        return x

    # --------------------------------------------------------- no-cache forward
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) as float32 for token ids (B, T), causal, no KV cache."""
        B, T = idx.shape
        if T > self.rotary_len:
            raise ValueError(f"sequence of {T} tokens exceeds the rotary table ({self.rotary_len})")
        cos, sin = self.cos[:T, None, :], self.sin[:T, None, :]  # broadcast over heads
        x = self._embed(idx)
        if self.spec.smear and T > 1:
            x = torch.cat([x[:, :1], x[:, 1:] + self._smear_gate(x[:, 1:]) * x[:, :-1]], dim=1)
        pos = torch.arange(T, device=idx.device)
        masks: dict[int, torch.Tensor | None] = {}

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            w = self.windows[i]
            if w not in masks:
                masks[w] = None if w >= T - 1 else window_mask(pos, pos, w)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            mask = masks[w]
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            return y.transpose(1, 2).reshape(B, T, -1)

        return self._logits(self._blocks(x, idx, cos, sin, attend))

    # ------------------------------------------------ continuous-batching step
    def forward_step(self, batch: StepBatch, cache: KVStore) -> torch.Tensor:
        """Run one packed step, writing K/V into the slot cache.

        Returns float32 logits (len(batch.logit_index), vocab_size).
        """
        idx, pos = batch.tokens, batch.positions
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        e = self._embed(idx)
        x = self._smear_step(e, batch, cache) if self.spec.smear else e
        step_attention = StepAttention(batch, self.config.n_head, self.config.head_dim)
        # Row of each (token, kv head) in a layer's cache viewed as (-1, head_dim): the same for every layer.
        kv_rows = self._kv_rows(batch, cache.k[0])

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kc, vc = cache.k[i], cache.v[i]
            # Scatter this step's keys/values to (slot, head, position) rows of the cache:
            # index_copy_ into the flat view is much cheaper than advanced-index assignment.
            kc.view(-1, kc.shape[-1]).index_copy_(0, kv_rows, k.reshape(-1, k.shape[-1]).to(kc.dtype))
            vc.view(-1, vc.shape[-1]).index_copy_(0, kv_rows, v.reshape(-1, v.shape[-1]).to(vc.dtype))
            return step_attention(q, kc, vc, self.windows[i])

        x = self._blocks(x, idx, cos, sin, attend)
        if self.spec.smear:
            # Saved only after every layer ran, so a step that raises leaves the state intact.
            assert cache.prev_embed is not None, "a smear model's cache keeps the previous embeddings"
            last = batch.segment_last
            cache.prev_embed[batch.slots[last]] = e[last].to(cache.prev_embed.dtype)
        return self._logits(x[batch.logit_index])

    def resume_slot(self, cache: KVStore, slot: int, last_kept_token: int) -> None:
        """Make a slot whose first positions hold a reused prefix ready to continue after it.

        Keys and values of a prefix depend only on that prefix, so they stay valid as they
        are. The one other per-slot state, smear's previous embedding, belongs to whatever
        the slot fed last; the next token needs the embedding of the prefix's last token,
        which is a function of that token id alone.
        """
        if cache.prev_embed is not None:
            token = torch.tensor([last_kept_token], device=cache.prev_embed.device)
            cache.prev_embed[slot] = self._embed(token)[0].to(cache.prev_embed.dtype)

    @staticmethod
    def _kv_rows(batch: StepBatch, kc: torch.Tensor) -> torch.Tensor:
        """Row of each (token, kv head) in a layer's cache flattened to (-1, head_dim)."""
        _, n_kv, max_len, _ = kc.shape
        heads = torch.arange(n_kv, device=kc.device)
        return ((batch.slots[:, None] * n_kv + heads[None, :]) * max_len + batch.positions[:, None]).reshape(-1)

    def _smear_step(self, e: torch.Tensor, batch: StepBatch, cache: KVStore) -> torch.Tensor:
        # The previous embedding of a row's first token in this step comes from the slot's
        # saved state (a decode step or a later prefill chunk); inside a chunk it is the
        # previous packed token. Position 0 has no predecessor.
        prev = torch.empty_like(e)
        prev[1:] = e[:-1]
        first = batch.segment_first
        assert cache.prev_embed is not None, "a smear model's cache keeps the previous embeddings"
        saved = cache.prev_embed[batch.slots[first]].to(e.dtype)
        prev[first] = saved * batch.segment_first_has_prev[:, None].to(e.dtype)
        return e + self._smear_gate(e) * prev

    # ------------------------------------------------------------------- facts
    def num_params(self) -> int:
        packed = sum(m.in_features * m.out_features for m in self.modules() if isinstance(m, Int8Linear))
        return packed + sum(p.numel() for p in self.parameters())
