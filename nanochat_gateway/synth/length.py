"""How many tokens a conversation takes once nanochat renders it for SFT, and the limit it must fit.

nanochat renders a conversation as ``<|bos|>`` then, per message, a start token, the text and an end
token, and silently truncates past its sequence length, cutting off the final assistant turn that the
loss is computed on. Three ways to count, best first:

1. ``--tokenizer DIR``: the checkpoint's own tokenizer.pkl, exact; its meta file gives the limit;
2. tiktoken's cl100k_base, an estimate, when it is cached or can be downloaded;
3. UTF-8 bytes / 3, a deliberately pessimistic estimate (English runs near 4-5 bytes per token on
   nanochat's and cl100k's vocabularies), used when cl100k is not available, e.g. offline.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nanochat_gateway.synth.conversation import Message

DEFAULT_CONTEXT = 2048  # nanochat's default SFT max_seq_len and render_conversation max_tokens
_BYTES_PER_TOKEN = 3
_CL100K_WAIT_S = 20.0  # tiktoken's download has no timeout of its own


class TokenizerUnavailable(Exception):
    """The tokenizer asked for cannot be loaded; the message says why."""


@dataclass(frozen=True)
class TokenCounter:
    """Counts the rendered length of conversations against ``limit``."""

    name: str
    limit: int
    encode_len: Callable[[str], int]

    def count(self, messages: list[Message]) -> int:
        """Tokens of the rendered conversation: bos, then start + text + end per message."""
        return 1 + sum(2 + self.encode_len(m["content"]) for m in messages)


def checkpoint_counter(source: Path, max_context: int | None) -> TokenCounter:
    """Exact counts with a checkpoint's tokenizer; the limit is its sequence_len unless overridden.

    ``source`` is a checkpoint directory (flat or a nanochat base dir), or a tokenizer.pkl or the
    directory holding one, in which case the limit is ``max_context`` or nanochat's default.
    """
    from nanochat_gateway.model.checkpoint import CheckpointError, find_checkpoint, read_meta
    from nanochat_gateway.model.tokenizer import TokenizerError, load_tokenizer

    try:
        files = find_checkpoint(source)
        tokenizer = load_tokenizer(files.tokenizer_path)
        sequence_len = int(read_meta(files.meta_path)["model_config"].get("sequence_len", DEFAULT_CONTEXT))
    except (CheckpointError, TokenizerError) as exc:
        try:
            tokenizer, sequence_len = load_tokenizer(source), DEFAULT_CONTEXT
        except TokenizerError:
            raise TokenizerUnavailable(f"--tokenizer {source}: {exc}") from None
    return TokenCounter(f"the tokenizer of {source}", max_context or sequence_len,
                        lambda text: len(tokenizer.encode(text)))


def load_cl100k() -> Callable[[str], int]:
    """cl100k_base's encoder length, from tiktoken's cache or a download bounded in time."""
    import tiktoken

    result: list[Callable[[str], int]] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            enc = tiktoken.get_encoding("cl100k_base")
            result.append(lambda text: len(enc.encode_ordinary(text)))
        except Exception as exc:  # network, cache and hash errors alike mean "not available"
            errors.append(exc)

    # A daemon thread: a download stuck on a silent network must not keep the process alive.
    thread = threading.Thread(target=load, name="cl100k-load", daemon=True)
    thread.start()
    thread.join(_CL100K_WAIT_S)
    if result:
        return result[0]
    why = f"{type(errors[0]).__name__}: {errors[0]}" if errors else f"no answer in {_CL100K_WAIT_S:.0f} s"
    raise TokenizerUnavailable(f"tiktoken cl100k_base is not available ({why[:200]})")


def byte_estimate(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / _BYTES_PER_TOKEN)


def choose_counter(tokenizer: Path | None, max_context: int | None,
                   cl100k: Callable[[], Callable[[str], int]] = load_cl100k) -> tuple[TokenCounter, str | None]:
    """The best counter available, and a note for the report when it fell back to an estimate.

    Raises TokenizerUnavailable only for an explicit ``tokenizer`` that cannot be loaded.
    """
    if tokenizer is not None:
        return checkpoint_counter(tokenizer, max_context), None
    limit = max_context or DEFAULT_CONTEXT
    try:
        return TokenCounter("tiktoken cl100k_base (an estimate)", limit, cl100k()), None
    except TokenizerUnavailable as exc:
        note = (f"{exc}; token counts are estimated as UTF-8 bytes / {_BYTES_PER_TOKEN}, which overestimates "
                f"English text. Pass --tokenizer CHECKPOINT_DIR for exact counts.")
        return TokenCounter(f"UTF-8 bytes / {_BYTES_PER_TOKEN} (an estimate)", limit, byte_estimate), note
