"""nanochat's tokenizer: a tiktoken BPE encoding plus nine chat-control special tokens.

``load_tokenizer`` reads a nanochat ``tokenizer.pkl`` without executing anything the file asks
for: the only global it resolves is ``tiktoken.core.Encoding``, and even that is replaced by a
recorder, so the Encoding is built here from a type-checked state dict.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import tiktoken

__all__ = [
    "SPECIAL_TOKENS",
    "SPLIT_PATTERN",
    "NanochatTokenizer",
    "TokenizerError",
    "load_tokenizer",
]

# nanochat's special tokens; their order fixes their ids (appended after the mergeable ranks).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
)

# GPT-4's split regex, except that digit runs are cut into groups of at most two (\p{N}{1,2}).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

_ALLOWED_GLOBAL = ("tiktoken.core", "Encoding")
_STATE_KEYS = frozenset({"name", "pat_str", "mergeable_ranks", "special_tokens"})
# tiktoken's Rust core stores ranks as u32; refuse anything it cannot represent.
_MAX_TOKEN_ID = 2**32 - 2
# Real tokenizer.pkl files are ~1 MB for a 65k vocab; a cap stops a hostile file from eating RAM.
_MAX_FILE_BYTES = 256 * 1024 * 1024

# Attribute name on NanochatTokenizer for each special token after <|bos|>.
_SPECIAL_ATTRS = {
    "<|user_start|>": "user_start",
    "<|user_end|>": "user_end",
    "<|assistant_start|>": "assistant_start",
    "<|assistant_end|>": "assistant_end",
    "<|python_start|>": "python_start",
    "<|python_end|>": "python_end",
    "<|output_start|>": "output_start",
    "<|output_end|>": "output_end",
}


class TokenizerError(ValueError):
    """A tokenizer file or encoding that cannot be used safely."""


class _EncodingRecorder:
    """Stand-in for ``tiktoken.core.Encoding`` while unpickling: keeps the BUILD state, runs nothing."""

    __slots__ = ("state", "has_state")
    state: object
    has_state: bool

    def __new__(cls, *args: object, **kwargs: object) -> _EncodingRecorder:
        # nanochat's files use NEWOBJ with no arguments; anything else is not a tiktoken pickle.
        if args or kwargs:
            raise pickle.UnpicklingError("tiktoken.core.Encoding must be created without arguments")
        self = object.__new__(cls)
        self.state = None
        self.has_state = False
        return self

    def __setstate__(self, state: object) -> None:
        if self.has_state:
            raise pickle.UnpicklingError("tiktoken.core.Encoding state was set twice")
        self.state = state
        self.has_state = True


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves exactly one global, and to a recorder rather than the real class."""

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._source = source

    def find_class(self, module: str, name: str) -> type:
        if (module, name) == _ALLOWED_GLOBAL:
            return _EncodingRecorder
        raise TokenizerError(
            f"{self._source}: refusing to load global '{module}.{name}'; "
            "only tiktoken.core.Encoding is allowed"
        )

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not supported")


def _check_state(state: object, source: str) -> tuple[str, str, dict[bytes, int], dict[str, int]]:
    """Validate an Encoding state dict; return (name, pat_str, mergeable_ranks, special_tokens)."""
    if not isinstance(state, dict):
        raise TokenizerError(
            f"{source}: Encoding state is a {type(state).__name__}, expected a dict "
            "(registered tiktoken encodings pickled by name are not supported)"
        )
    keys = set(state)
    if keys != _STATE_KEYS:
        missing = sorted(str(k) for k in _STATE_KEYS - keys)
        extra = sorted(repr(k) for k in keys - _STATE_KEYS)
        raise TokenizerError(f"{source}: Encoding state has missing keys {missing} / unexpected keys {extra}")
    name, pat_str = state["name"], state["pat_str"]
    ranks, specials = state["mergeable_ranks"], state["special_tokens"]
    if type(name) is not str:
        raise TokenizerError(f"{source}: 'name' must be a str, got {type(name).__name__}")
    if type(pat_str) is not str or not pat_str:
        raise TokenizerError(f"{source}: 'pat_str' must be a non-empty str")
    if type(ranks) is not dict or not all(type(k) is bytes and type(v) is int for k, v in ranks.items()):
        raise TokenizerError(f"{source}: 'mergeable_ranks' must be a dict[bytes, int]")
    if type(specials) is not dict or not all(type(k) is str and type(v) is int for k, v in specials.items()):
        raise TokenizerError(f"{source}: 'special_tokens' must be a dict[str, int]")
    return name, pat_str, ranks, specials


def _check_vocab(ranks: Mapping[bytes, int], specials: Mapping[str, int], source: str) -> None:
    """Refuse vocabularies that would make tiktoken's Rust core panic or that lack nanochat's specials."""
    if not ranks:
        raise TokenizerError(f"{source}: no mergeable ranks")
    missing_bytes = [i for i in range(256) if bytes([i]) not in ranks]
    if missing_bytes:
        # Byte-level BPE needs every single byte, or encoding unseen bytes crashes.
        raise TokenizerError(f"{source}: {len(missing_bytes)} of the 256 single bytes have no rank")
    rank_ids = set(ranks.values())
    if len(rank_ids) != len(ranks):
        raise TokenizerError(f"{source}: two mergeable tokens share a rank")
    special_ids = set(specials.values())
    if len(special_ids) != len(specials):
        raise TokenizerError(f"{source}: two special tokens share an id")
    if rank_ids & special_ids:
        raise TokenizerError(f"{source}: a special token id collides with a mergeable rank")
    if min(rank_ids | special_ids) < 0 or max(rank_ids | special_ids) > _MAX_TOKEN_ID:
        raise TokenizerError(f"{source}: token ids must be in [0, {_MAX_TOKEN_ID}]")
    absent = [s for s in SPECIAL_TOKENS if s not in specials]
    if absent:
        raise TokenizerError(f"{source}: missing nanochat special tokens {absent}")


def load_tokenizer(path: str | os.PathLike[str]) -> NanochatTokenizer:
    """Load a nanochat ``tokenizer.pkl`` (or the directory holding one) without running pickled code.

    Raises TokenizerError, naming the file, for a missing, truncated, hostile or malformed file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.pkl"
    source = str(p)
    try:
        with open(p, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise TokenizerError(f"{source}: file not found") from None
    except OSError as e:
        raise TokenizerError(f"{source}: cannot read file ({e.strerror or e})") from e
    if len(data) > _MAX_FILE_BYTES:
        raise TokenizerError(f"{source}: file is larger than {_MAX_FILE_BYTES} bytes")
    if not data:
        raise TokenizerError(f"{source}: file is empty")
    try:
        obj = _RestrictedUnpickler(data, source).load()
    except TokenizerError:
        raise
    except EOFError as e:
        raise TokenizerError(f"{source}: file is truncated (pickle data ends early)") from e
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise TokenizerError(f"{source}: file is truncated (pickle data ends early)") from e
        raise TokenizerError(f"{source}: not a valid pickle ({e})") from e
    except Exception as e:
        # A hostile or corrupt stream can fail in many ways inside pickle; report them all alike.
        raise TokenizerError(f"{source}: not a valid pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, _EncodingRecorder):
        raise TokenizerError(f"{source}: pickle holds a {type(obj).__name__}, expected a tiktoken Encoding")
    if not obj.has_state:
        raise TokenizerError(f"{source}: the pickled Encoding has no state")
    name, pat_str, ranks, specials = _check_state(obj.state, source)
    _check_vocab(ranks, specials, source)
    try:
        enc = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=specials)
    except Exception as e:
        # Mostly an invalid pat_str, which tiktoken's regex compiler rejects.
        raise TokenizerError(f"{source}: tiktoken rejected the encoding ({e})") from e
    return NanochatTokenizer(enc, source=source)


class NanochatTokenizer:
    """A tiktoken Encoding with nanochat's special tokens resolved to ids."""

    enc: tiktoken.Encoding
    vocab_size: int
    bos_id: int
    user_start: int
    user_end: int
    assistant_start: int
    assistant_end: int
    python_start: int
    python_end: int
    output_start: int
    output_end: int
    special_ids: frozenset[int]

    def __init__(self, enc: tiktoken.Encoding, *, source: str = "encoding") -> None:
        """Wrap ``enc``; it must define all of nanochat's SPECIAL_TOKENS."""
        specials = {name: enc.encode_single_token(name) for name in enc.special_tokens_set}
        absent = [s for s in SPECIAL_TOKENS if s not in specials]
        if absent:
            raise TokenizerError(f"{source}: missing nanochat special tokens {absent}")
        self.enc = enc
        self.vocab_size = enc.n_vocab
        self.bos_id = specials["<|bos|>"]
        for name, attr in _SPECIAL_ATTRS.items():
            setattr(self, attr, specials[name])
        self._specials_by_name = specials
        self.special_ids = frozenset(specials.values())
        self._table = self._build_byte_table()

    @classmethod
    def from_encoding(cls, enc: tiktoken.Encoding) -> NanochatTokenizer:
        """Wrap an existing tiktoken Encoding (for example one returned by ``train_bpe``)."""
        return cls(enc, source=f"encoding {enc.name!r}")

    def _build_byte_table(self) -> list[bytes | None]:
        # One list lookup per token is far cheaper than a call into tiktoken on the streaming path.
        table: list[bytes | None] = [None] * self.vocab_size
        for token_id in range(self.vocab_size):
            if token_id in self.special_ids:
                continue
            # Some encodings leave holes in their id space; those ids stay None.
            with contextlib.suppress(KeyError):
                table[token_id] = self.enc.decode_single_token_bytes(token_id)
        return table

    def encode(self, text: str) -> list[int]:
        """Encode ordinary text; text spelling a special token becomes plain bytes, never a control id."""
        return self.enc.encode_ordinary(text)

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Encode text in which special token names (``<|bos|>``, ...) become their control ids,
        as Hugging Face tokenizers read them; for tokenizer endpoints, never for chat content."""
        return self.enc.encode(text, allowed_special="all")

    @property
    def special_tokens(self) -> dict[str, int]:
        """Every special token's name and id."""
        return dict(self._specials_by_name)

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Encode several ordinary texts (threads inside tiktoken)."""
        return self.enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; invalid UTF-8 becomes U+FFFD, special ids become their names."""
        return self.enc.decode(list(ids), errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of a token; a special token gives its name in UTF-8."""
        if 0 <= token_id < self.vocab_size:
            raw = self._table[token_id]
            if raw is not None:
                return raw
            if token_id in self.special_ids:
                return self.enc.decode_single_token_bytes(token_id)
        raise TokenizerError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")

    def is_special(self, token_id: int) -> bool:
        """True for the ids of special tokens."""
        return token_id in self.special_ids

    def encode_special(self, name: str) -> int:
        """Id of the special token ``name``, e.g. ``"<|assistant_end|>"``."""
        try:
            return self._specials_by_name[name]
        except KeyError:
            raise TokenizerError(f"{name!r} is not a special token of this tokenizer") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Pickle the Encoding as nanochat does; a directory gets ``tokenizer.pkl`` inside it.

        Returns the file written.
        """
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.pkl"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.tmp-{os.getpid()}")  # unique: concurrent writers never share it
        with open(tmp, "wb") as f:
            # Protocol 4 is what nanochat writes on Python 3.8-3.13, so files stay byte-identical.
            pickle.dump(self.enc, f, protocol=4)
        os.replace(tmp, p)
        return p

    def __repr__(self) -> str:
        return f"NanochatTokenizer(name={self.enc.name!r}, vocab_size={self.vocab_size})"
