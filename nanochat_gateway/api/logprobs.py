"""Token logprobs in the two OpenAI formats (chat and legacy completions), as response models.

A token whose bytes are not valid UTF-8 on their own (a piece of a multi-byte character) is
written ``bytes:\\xNN...``, as OpenAI and vLLM write it, instead of a replacement character:
distinct tokens then always have distinct strings, so the legacy format's ``top_logprobs``
dicts, keyed by token string, hold every alternative.
"""

from __future__ import annotations

import codecs

from nanochat_gateway.api.schemas import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob
from nanochat_gateway.engine.request import TokenLogprob as EngineLogprob
from nanochat_gateway.model.tokenizer import NanochatTokenizer


def token_string(raw: bytes) -> str:
    """A token's text, or ``bytes:\\xNN...`` when its bytes are not valid UTF-8 by themselves."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class TokenText:
    """Token id -> (token string, raw bytes), cached: the same tokens recur constantly."""

    def __init__(self, tokenizer: NanochatTokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._tokenizer.token_bytes(token_id)
            hit = self._cache[token_id] = (token_string(raw), raw)
        return hit


def chat_logprobs(entries: list[EngineLogprob], token_text: TokenText) -> ChatLogprobs:
    """Chat format: content = [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]."""
    content = []
    for entry in entries:
        text, raw = token_text(entry.token_id)
        top = []
        for token_id, logprob in entry.top:
            t, b = token_text(token_id)
            top.append(TopLogprob(token=t, logprob=logprob, bytes=list(b)))
        content.append(TokenLogprob(token=text, logprob=entry.logprob, bytes=list(raw), top_logprobs=top))
    return ChatLogprobs(content=content, refusal=None)


class CompletionLogprobsBuilder:
    """Legacy completions format, built incrementally: tokens, token_logprobs, top_logprobs, text_offset.

    ``text_offset`` counts characters of the text as it decodes: a token that ends inside a
    multi-byte character advances it only once the character is complete.
    """

    def __init__(self, token_text: TokenText):
        self._token_text = token_text
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = 0

    def block(self, entries: list[EngineLogprob], prompt_tokens: list[int] | None = None,
              prompt_scores: list[EngineLogprob | None] | None = None) -> CompletionLogprobs:
        """The next stretch of tokens: echoed prompt tokens (scored when ``prompt_scores`` gives
        one entry per prompt token, None where there is no score), then generated ones.

        Each position's ``top_logprobs`` holds the requested alternatives plus the token itself,
        so it has up to logprobs + 1 entries, as in OpenAI's API.
        """
        out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        scores = prompt_scores if prompt_scores is not None else [None] * len(prompt_tokens or [])
        for token_id, score in zip(prompt_tokens or [], scores, strict=True):
            self._add(out, token_id, score)
        for entry in entries:
            self._add(out, entry.token_id, entry)
        return out

    def _add(self, out: CompletionLogprobs, token_id: int, entry: EngineLogprob | None) -> None:
        text, raw = self._token_text(token_id)
        out.tokens.append(text)
        out.text_offset.append(self.offset)
        self.offset += len(self._utf8.decode(raw))
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            return
        out.token_logprobs.append(entry.logprob)
        top = {self._token_text(t)[0]: lp for t, lp in entry.top}
        top.setdefault(text, entry.logprob)
        out.top_logprobs.append(top)
