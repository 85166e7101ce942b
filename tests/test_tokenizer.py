"""Tokenizer loading (safe unpickling), encoding against golden data, and saving."""

from __future__ import annotations

import copyreg
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import tiktoken

from nanochat_gateway.model.tokenizer import (
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    NanochatTokenizer,
    TokenizerError,
    load_tokenizer,
)

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
GENERATIONS = ["2025-10", "2025-12", "2026-01", "2026-03", "2026-07"]
GOLDEN_PKL = GOLDEN / "2026-07" / "tokenizer.pkl"


def _chat(gen: str) -> dict:
    return json.loads((GOLDEN / gen / "chat.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("gen", GENERATIONS)
def test_golden_encode_checks(gen: str) -> None:
    tok = load_tokenizer(GOLDEN / gen / "tokenizer.pkl")
    chat = _chat(gen)
    assert chat["encode_checks"]
    for check in chat["encode_checks"]:
        assert tok.encode(check["text"]) == check["ids"], check["text"]
        assert tok.decode(check["ids"]) == check["text"]


@pytest.mark.parametrize("gen", GENERATIONS)
def test_golden_special_ids(gen: str) -> None:
    tok = load_tokenizer(GOLDEN / gen)  # a directory works too
    chat = _chat(gen)
    assert tok.bos_id == chat["bos_id"]
    for name, token_id in chat["special_tokens"].items():
        assert tok.encode_special(name) == token_id
    assert list(chat["special_tokens"]) == list(SPECIAL_TOKENS)
    attrs = [
        tok.bos_id,
        tok.user_start,
        tok.user_end,
        tok.assistant_start,
        tok.assistant_end,
        tok.python_start,
        tok.python_end,
        tok.output_start,
        tok.output_end,
    ]
    assert attrs == [chat["special_tokens"][s] for s in SPECIAL_TOKENS]
    assert tok.special_ids == frozenset(attrs)
    assert tok.vocab_size == chat["vocab_size"] == 300


def test_split_pattern_matches_nanochat_file() -> None:
    tok = load_tokenizer(GOLDEN_PKL)
    assert tok.enc._pat_str == SPLIT_PATTERN
    assert r"\p{N}{1,2}" in SPLIT_PATTERN
    assert tok.enc.name == "rustbpe"


def test_special_token_text_is_encoded_as_plain_bytes() -> None:
    tok = load_tokenizer(GOLDEN_PKL)
    for name in SPECIAL_TOKENS:
        ids = tok.encode(f"x{name}y")
        assert not set(ids) & tok.special_ids
        assert tok.decode(ids) == f"x{name}y"


def test_token_bytes_and_is_special() -> None:
    tok = load_tokenizer(GOLDEN_PKL)
    assert tok.token_bytes(65) == b"A"
    assert tok.token_bytes(tok.encode(" the")[0]) == b" the"
    assert tok.token_bytes(tok.assistant_end) == b"<|assistant_end|>"
    assert tok.is_special(tok.bos_id) and not tok.is_special(65)
    for bad in (-1, tok.vocab_size, 10**9):
        with pytest.raises(TokenizerError):
            tok.token_bytes(bad)
    with pytest.raises(TokenizerError):
        tok.encode_special("<|endoftext|>")


def test_decode_replaces_invalid_utf8() -> None:
    tok = load_tokenizer(GOLDEN_PKL)
    assert tok.decode([0xE6, 65]) == "\ufffdA"


def test_save_is_byte_identical_and_readable_by_plain_pickle(tmp_path: Path) -> None:
    tok = load_tokenizer(GOLDEN_PKL)
    written = tok.save(tmp_path)
    assert written == tmp_path / "tokenizer.pkl"
    assert written.read_bytes() == GOLDEN_PKL.read_bytes()
    # nanochat itself reads the file with a plain pickle.load.
    with open(written, "rb") as f:
        enc = pickle.load(f)
    assert isinstance(enc, tiktoken.Encoding)
    assert load_tokenizer(written).encode("hi") == tok.encode("hi")
    other = tok.save(tmp_path / "sub" / "other.pkl")
    assert other.read_bytes() == GOLDEN_PKL.read_bytes()


def test_from_encoding_requires_nanochat_specials() -> None:
    gold = load_tokenizer(GOLDEN_PKL).enc
    ranks = {bytes([i]): i for i in range(256)}
    bare = tiktoken.Encoding("bare", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={})
    with pytest.raises(TokenizerError, match="missing nanochat special tokens"):
        NanochatTokenizer.from_encoding(bare)
    assert NanochatTokenizer.from_encoding(gold).bos_id == 291


# ---------------------------------------------------------------- hostile and broken files


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious tokenizer.pkl would contain."""

    def __init__(self, func: object, args: tuple) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


def _marker_payloads(marker: Path) -> list[tuple[bytes, str]]:
    """(pickle bytes, refused global) pairs; each would create ``marker`` if it ran."""
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    sh = f"touch '{marker}'"
    proto0 = f"cos\nsystem\n(V{sh}\ntR.".encode()
    return [
        (pickle.dumps(_Reduce(os.system, (sh,))), os.system.__module__ + ".system"),
        (pickle.dumps(_Reduce(exec, (code,))), "builtins.exec"),
        # Protocol 2 spells it the Python 2 way; the name is refused before any import mapping.
        (pickle.dumps(_Reduce(eval, (code,)), protocol=2), "__builtin__.eval"),
        (proto0, "os.system"),
        # Disguised: a real-looking Encoding whose state dict hides the payload.
        (
            pickle.dumps(
                {"name": _Reduce(exec, (code,)), "pat_str": SPLIT_PATTERN},
            ),
            "builtins.exec",
        ),
    ]


def test_malicious_pickles_are_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for i, (payload, refused) in enumerate(_marker_payloads(marker)):
        path = tmp_path / f"evil{i}.pkl"
        path.write_bytes(payload)
        with pytest.raises(TokenizerError) as err:
            load_tokenizer(path)
        msg = str(err.value)
        assert f"refusing to load global '{refused}'" in msg
        assert str(path) in msg
        assert "only tiktoken.core.Encoding is allowed" in msg
        assert not marker.exists()


def test_unknown_module_is_refused_not_imported(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(b"cnanochat_gateway_no_such_module\nboom\n)R.")
    with pytest.raises(
        TokenizerError, match="refusing to load global 'nanochat_gateway_no_such_module.boom'"
    ):
        load_tokenizer(path)


def test_encoding_with_constructor_arguments_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(pickle.dumps(_Reduce(tiktoken.Encoding, ("x",))))
    with pytest.raises(TokenizerError, match="without arguments"):
        load_tokenizer(path)


def _state_pickle(state: object) -> bytes:
    """Pickle bytes shaped like nanochat's file (NEWOBJ, BUILD) but with an arbitrary state."""

    cls = tiktoken.core.Encoding
    blank = cls.__new__(cls)

    class StatePickler(pickle.Pickler):
        def reducer_override(self, obj: object) -> object:
            # copyreg.__newobj__ makes pickle emit NEWOBJ on the class, as for a real Encoding.
            return (copyreg.__newobj__, (cls,), state) if obj is blank else NotImplemented

    buf = io.BytesIO()
    StatePickler(buf, protocol=4).dump(blank)
    return buf.getvalue()


def _golden_state() -> dict:
    enc = load_tokenizer(GOLDEN_PKL).enc
    return {
        "name": enc.name,
        "pat_str": enc._pat_str,
        "mergeable_ranks": dict(enc._mergeable_ranks),
        "special_tokens": dict(enc._special_tokens),
    }


def test_state_pickle_helper_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(_state_pickle(_golden_state()))
    assert path.read_bytes() == GOLDEN_PKL.read_bytes()
    assert load_tokenizer(path).encode("hi") == [104, 105]


def _broken_states() -> list[tuple[object, str]]:
    good = _golden_state()
    no_bos = dict(good, special_tokens={k: v for k, v in good["special_tokens"].items() if k != "<|bos|>"})
    str_ranks = dict(
        good, mergeable_ranks={k.decode("latin-1"): v for k, v in good["mergeable_ranks"].items()}
    )
    bool_rank = dict(good, mergeable_ranks=dict(good["mergeable_ranks"]))
    bool_rank["mergeable_ranks"][b"\x00"] = True
    dup_rank = dict(good, mergeable_ranks=dict(good["mergeable_ranks"]))
    dup_rank["mergeable_ranks"][b"zz-new"] = 5
    missing_byte = dict(good, mergeable_ranks={k: v for k, v in good["mergeable_ranks"].items() if k != b"A"})
    clash = dict(good, special_tokens=dict(good["special_tokens"], **{"<|bos|>": 7}))
    return [
        ("cl100k_base", "registered tiktoken encodings"),
        (dict(good, extra=1), "unexpected keys"),
        ({k: v for k, v in good.items() if k != "pat_str"}, "missing keys"),
        (no_bos, "missing nanochat special tokens"),
        (str_ranks, "dict[bytes, int]"),
        (bool_rank, "dict[bytes, int]"),
        (dup_rank, "share a rank"),
        (missing_byte, "single bytes have no rank"),
        (clash, "collides"),
        (dict(good, name=5), "'name' must be a str"),
        (dict(good, pat_str="(unclosed"), "tiktoken rejected"),
    ]


def test_wrong_state_is_refused(tmp_path: Path) -> None:
    for i, (state, reason) in enumerate(_broken_states()):
        path = tmp_path / f"bad{i}.pkl"
        path.write_bytes(_state_pickle(state))
        with pytest.raises(TokenizerError) as err:
            load_tokenizer(path)
        assert reason in str(err.value)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("cut", [1, 2, 40, 500, 2000, -2, -1])
def test_truncated_pickle(tmp_path: Path, cut: int) -> None:
    data = GOLDEN_PKL.read_bytes()
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(data[:cut])
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(path)
    assert str(err.value) == f"{path}: file is truncated (pickle data ends early)"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"not a pickle at all", "not a valid pickle"),
        (pickle.dumps({"a": 1}), "expected a tiktoken Encoding"),
        (pickle.dumps([1, 2, 3]), "expected a tiktoken Encoding"),
        (b"\x80\x04\x8c\rtiktoken.core\x8c\x08Encoding\x93)\x81.", "has no state"),
    ],
)
def test_garbage_files(tmp_path: Path, payload: bytes, reason: str) -> None:
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(payload)
    with pytest.raises(TokenizerError, match=reason):
        load_tokenizer(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="file not found"):
        load_tokenizer(tmp_path / "nope.pkl")
    with pytest.raises(TokenizerError, match="file not found"):
        load_tokenizer(tmp_path)  # a directory without tokenizer.pkl
