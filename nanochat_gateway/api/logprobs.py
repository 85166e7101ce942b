"""Token logprobs in the two OpenAI formats (chat and legacy completions), as response models."""

from __future__ import annotations

from nanochat_gateway.api.schemas import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob
from nanochat_gateway.engine.request import TokenLogprob as EngineLogprob
from nanochat_gateway.model.tokenizer import NanochatTokenizer


class TokenText:
    """Token id -> (display string, bytes), cached: the same tokens recur constantly."""

    def __init__(self, tokenizer: NanochatTokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._tokenizer.token_bytes(token_id)
            hit = self._cache[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return hit


def chat_logprobs(entries: list[EngineLogprob], token_text: TokenText) -> ChatLogprobs:
    """Chat format: content = [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]."""
    content = []
    for entry in entries:
        text, raw = token_text(entry.token_id)
        top = []
        for token_id, logprob in entry.top:
            t, b = token_text(token_id)
            top.append(TopLogprob(token=t, logprob=logprob, bytes=b))
        content.append(TokenLogprob(token=text, logprob=entry.logprob, bytes=raw, top_logprobs=top))
    return ChatLogprobs(content=content, refusal=None)


class CompletionLogprobsBuilder:
    """Legacy completions format, built incrementally: tokens, token_logprobs, top_logprobs, text_offset."""

    def __init__(self, token_text: TokenText, offset: int = 0):
        self._token_text = token_text
        self.offset = offset

    def block(self, entries: list[EngineLogprob], prompt_tokens: list[int] | None = None) -> CompletionLogprobs:
        """The next stretch of tokens: echoed prompt tokens (no logprobs computed) then generated ones."""
        tokens: list[str] = []
        logprobs: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        for token_id in prompt_tokens or []:
            text, _ = self._token_text(token_id)
            tokens.append(text)
            logprobs.append(None)
            tops.append(None)
            offsets.append(self.offset)
            self.offset += len(text)
        for entry in entries:
            text, _ = self._token_text(entry.token_id)
            tokens.append(text)
            logprobs.append(entry.logprob)
            tops.append({self._token_text(t)[0]: lp for t, lp in entry.top})
            offsets.append(self.offset)
            self.offset += len(text)
        return CompletionLogprobs(tokens=tokens, token_logprobs=logprobs, top_logprobs=tops,
                                                  text_offset=offsets)
