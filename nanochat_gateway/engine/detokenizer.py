"""Turn a stream of generated token ids into text, one token at a time.

Two jobs: hold back the bytes of a UTF-8 character until the token that completes it arrives, and
render nanochat's calculator tool calls (``<|python_start|> expr <|python_end|>
<|output_start|> result <|output_end|>``) instead of leaking control tokens into the text.
"""

from __future__ import annotations

import codecs
from typing import Literal

from nanochat_gateway.model.tokenizer import NanochatTokenizer

__all__ = ["IncrementalDetokenizer", "ToolCallMode"]

ToolCallMode = Literal["inline", "hidden", "raw"]

# Where the stream is relative to a tool call.
_TEXT = 0  # ordinary assistant text
_EXPR = 1  # between <|python_start|> and <|python_end|>
_AFTER_EXPR = 2  # <|python_end|> seen, an <|output_start|> may follow
_RESULT = 3  # between <|output_start|> and <|output_end|>


class IncrementalDetokenizer:
    """Stateful decoder for one generated sequence.

    ``tool_calls`` selects how calculator calls appear: ``"inline"`` as ``<<expr=result>>`` (GSM8K
    style), ``"hidden"`` not at all, ``"raw"`` as the expression and result text without markers.
    """

    __slots__ = ("_token_bytes", "_special", "_decoder", "_state", "_mode", "_ids")

    def __init__(self, tokenizer: NanochatTokenizer, tool_calls: ToolCallMode = "inline") -> None:
        if tool_calls not in ("inline", "hidden", "raw"):
            raise ValueError(f"tool_calls must be 'inline', 'hidden' or 'raw', got {tool_calls!r}")
        self._token_bytes = tokenizer.token_bytes
        self._special = tokenizer.special_ids
        self._ids = (
            tokenizer.python_start,
            tokenizer.python_end,
            tokenizer.output_start,
            tokenizer.output_end,
        )
        # The C incremental decoder keeps an incomplete character pending and replaces bytes only
        # once they can no longer start or continue a valid sequence.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._state = _TEXT
        self._mode = tool_calls

    def push(self, token_id: int) -> str:
        """Feed one token id; return the text that became complete with it (often "")."""
        if token_id not in self._special:
            prefix = ""
            if self._state == _AFTER_EXPR:
                prefix = self._close_call()
            elif self._mode == "hidden" and self._state != _TEXT:
                return ""
            return prefix + self._decoder.decode(self._token_bytes(token_id))
        return self._push_special(token_id)

    def flush(self) -> str:
        """End of stream: return pending bytes (as U+FFFD) and close an unfinished tool call."""
        text = self._decoder.decode(b"", True)
        self._decoder.reset()
        if self._mode == "hidden" and self._state in (_EXPR, _RESULT):
            text = ""
        if self._state != _TEXT:
            # The stream ended inside a tool call; close it so the text stays balanced.
            text += self._close_call()
        return text

    def _close_call(self) -> str:
        self._state = _TEXT
        return ">>" if self._mode == "inline" else ""

    def _push_special(self, token_id: int) -> str:
        # A control token ends the byte run: a partial character before it can never complete.
        text = self._decoder.decode(b"", True)
        self._decoder.reset()
        if self._mode == "hidden" and self._state in (_EXPR, _RESULT):
            text = ""
        inline = self._mode == "inline"
        python_start, python_end, output_start, output_end = self._ids
        state = self._state
        if token_id == python_start:
            if state == _AFTER_EXPR:
                text += self._close_call()
            if self._state == _TEXT:
                self._state = _EXPR
                if inline:
                    text += "<<"
        elif token_id == python_end:
            if state == _EXPR:
                self._state = _AFTER_EXPR
        elif token_id == output_start:
            if state in (_EXPR, _AFTER_EXPR):
                text += "=" if inline else ""
                self._state = _RESULT
            elif state == _TEXT:
                # A result without an expression; open the markers anyway so ">>" balances them.
                text += "<<=" if inline else ""
                self._state = _RESULT
        elif token_id == output_end:
            if state == _RESULT:
                text += self._close_call()
        elif state == _AFTER_EXPR:
            # Any other control token (e.g. <|assistant_end|>) means no result will follow.
            text += self._close_call()
        return text
