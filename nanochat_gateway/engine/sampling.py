"""Per-row token selection: greedy, temperature, top-k, top-p, penalties, bias, logprobs.

Every row owns its random generator and draws exactly one uniform number per sampled
token, so a seeded request picks the same tokens whether it runs alone or in a busy
batch. Logprobs are those of the model's raw distribution (before penalties and
temperature), as vLLM reports them by default. A row with a structured-output grammar
arrives with its forbidden tokens already at -inf, so every step here, its logprobs
included, sees only what the grammar allows; -inf entries never appear in top_logprobs.
"""

from __future__ import annotations

import torch

from nanochat_gateway.engine.request import SamplingParams, TokenLogprob

# Temperatures below this are greedy. Sampling there already gives the top token whenever it
# leads by 1e-4 (odds e^-10 against), and far below it logits / temperature overflows float32
# to inf, the softmax to NaN and the draw to token 0.
GREEDY_BELOW_TEMPERATURE = 1e-5


class RowSampler:
    """Sampling state of one running sequence (one choice of a request)."""

    __slots__ = ("params", "greedy", "generator", "bias_ids", "bias_values", "counts", "penalized", "device")

    def __init__(self, params: SamplingParams, seed: int, device: torch.device):
        self.params = params
        self.device = device
        self.greedy = params.temperature < GREEDY_BELOW_TEMPERATURE
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(seed % (2**63))
        self.bias_ids = self.bias_values = None
        if params.logit_bias:
            ids = list(params.logit_bias)
            self.bias_ids = torch.tensor(ids, dtype=torch.long, device=device)
            self.bias_values = torch.tensor([params.logit_bias[i] for i in ids], dtype=torch.float32, device=device)
        self.penalized = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self.counts: dict[int, int] = {}

    @property
    def adjusts_logits(self) -> bool:
        return self.bias_ids is not None or (self.penalized and bool(self.counts))

    def observe(self, token_id: int) -> None:
        """Record an output token (for presence/frequency penalties)."""
        if self.penalized:
            self.counts[token_id] = self.counts.get(token_id, 0) + 1

    def adjust(self, row: torch.Tensor) -> None:
        """Apply logit_bias and OpenAI-style penalties to one row of logits, in place."""
        if self.bias_ids is not None and self.bias_values is not None:
            row.index_add_(0, self.bias_ids, self.bias_values)
        if self.penalized and self.counts:
            ids = torch.tensor(list(self.counts), dtype=torch.long, device=row.device)
            counts = torch.tensor(list(self.counts.values()), dtype=row.dtype, device=row.device)
            p = self.params
            row.index_add_(0, ids, -(counts * p.frequency_penalty + p.presence_penalty))

    def draw(self, row: torch.Tensor) -> int:
        """Sample one token id from adjusted logits with temperature, top-k and top-p."""
        p = self.params
        logits = row / p.temperature
        if 0 < p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (at least one token)
            outside = (sorted_probs.cumsum(0) - sorted_probs) >= p.top_p
            outside[0] = False  # a top_p below float32's range (1e-300 rounds to 0.0) would drop it too
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        cdf = probs.cumsum(0)
        u = torch.rand((), generator=self.generator).item() * cdf[-1].item()
        token = int(torch.searchsorted(cdf, torch.tensor([u], dtype=cdf.dtype, device=cdf.device)).item())
        # guard against landing on a zero-probability tail from float round-off
        return min(token, probs.numel() - 1) if probs[min(token, probs.numel() - 1)] > 0 else int(probs.argmax())


def select_tokens(
    logits: torch.Tensor, samplers: list[RowSampler]
) -> tuple[list[int], list[TokenLogprob | None]]:
    """Choose one token per row of float32 logits (R, vocab) with each row's own sampler."""
    want_logprobs = [s.params.logprobs for s in samplers]
    logprobs: list[TokenLogprob | None] = [None] * len(samplers)
    log_probs = torch.log_softmax(logits, dim=-1) if any(want_logprobs) else None
    adjusted = logits
    if any(s.adjusts_logits for s in samplers):
        adjusted = logits.clone()
        for r, s in enumerate(samplers):
            if s.adjusts_logits:
                s.adjust(adjusted[r])
    tokens = adjusted.argmax(dim=-1).tolist()
    for r, s in enumerate(samplers):
        if not s.greedy:
            tokens[r] = s.draw(adjusted[r])
        s.observe(tokens[r])
    if log_probs is not None:
        for r, s in enumerate(samplers):
            if want_logprobs[r]:
                logprobs[r] = _logprob_entry(log_probs[r], tokens[r], s.params.top_logprobs)
    return tokens, logprobs


def _logprob_entry(row: torch.Tensor, token: int, top_n: int) -> TokenLogprob:
    top: list[tuple[int, float]] = []
    if top_n > 0:
        values, ids = torch.topk(row, top_n)
        top = [(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True) if v != float("-inf")]
    return TokenLogprob(token_id=token, logprob=float(row[token]), top=top)


def prompt_logprob_entries(logits: torch.Tensor, targets: list[int], top_n: int) -> list[TokenLogprob]:
    """Scores of prompt tokens: row r of ``logits`` (float32, (len(targets), vocab)) is the model's
    prediction for ``targets[r]``, the prompt token that follows it."""
    log_probs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(targets, dtype=torch.long, device=logits.device)
    chosen = log_probs.gather(1, target[:, None]).squeeze(1).tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in targets]
    if top_n > 0:
        values, ids = torch.topk(log_probs, top_n, dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return [TokenLogprob(token_id=t, logprob=lp, top=top) for t, lp, top in zip(targets, chosen, tops, strict=True)]
