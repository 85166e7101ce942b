"""The pure-Python BPE trainer: round trips, reachability, nanochat layout, parity with rustbpe, speed."""

from __future__ import annotations

import hashlib
import importlib
import itertools
import os
import pickle
import sysconfig
import time
from pathlib import Path

import pytest
import regex
import tiktoken

from nanochat_gateway.model.bpe_train import demo_corpus, train_bpe
from nanochat_gateway.model.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, NanochatTokenizer, load_tokenizer

GOLDEN = Path(__file__).parent / "fixtures" / "golden"

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog 1234567.",
    "Grüße aus Zürich! Ça va? naïve café, 東京タワー, Ελληνικά — rocket 🚀 and smile 😀",
    "👩‍👩‍👧 🇨🇭 e\u0301 \t\ttabs\r\n  trailing   \n\n<|bos|><|assistant_end|>",
    "def f(x):\n    return x ** 2  # it's fine, we'll see, they're ok\n",
    "",
]


def _small_corpus() -> list[str]:
    names = ["json", "re", "os", "collections", "string", "argparse", "random", "heapq", "csv", "typing"]
    docs = [importlib.import_module(n).__doc__ or "" for n in names]
    return docs + SAMPLES * 3


def _assert_reachable(enc: tiktoken.Encoding, n_ranks: int) -> None:
    # BPE on a token's own bytes must give back that single token, or the token is dead weight.
    for rank in range(n_ranks):
        raw = enc.decode_single_token_bytes(rank)
        assert enc._encode_single_piece(raw) == [rank], (rank, raw)


@pytest.mark.parametrize("vocab_size", [265, 300, 777, 2000])
def test_small_vocab_round_trip_and_reachability(vocab_size: int) -> None:
    enc = train_bpe(_small_corpus(), vocab_size)
    n_ranks = vocab_size - len(SPECIAL_TOKENS)
    assert enc.n_vocab == vocab_size
    assert sorted(enc._mergeable_ranks.values()) == list(range(n_ranks))
    assert all(enc._mergeable_ranks[bytes([i])] == i for i in range(256))
    assert enc._special_tokens == {s: n_ranks + i for i, s in enumerate(SPECIAL_TOKENS)}
    assert enc._pat_str == SPLIT_PATTERN and enc.name == "rustbpe"
    _assert_reachable(enc, n_ranks)
    for text in SAMPLES:
        ids = enc.encode_ordinary(text)
        assert enc.decode(ids) == text
        assert all(i < n_ranks for i in ids)
    if vocab_size >= 777:
        # Merges actually compress: fewer tokens than bytes on familiar text.
        text = _small_corpus()[0]
        assert len(enc.encode_ordinary(text)) < 0.6 * len(text.encode())


def test_trained_encoding_is_a_nanochat_tokenizer(tmp_path: Path) -> None:
    enc = train_bpe(_small_corpus(), 400, name="demo")
    tok = NanochatTokenizer.from_encoding(enc)
    assert (tok.vocab_size, tok.bos_id, tok.output_end) == (400, 391, 399)
    path = tok.save(tmp_path)
    loaded = load_tokenizer(path)
    assert loaded.enc.name == "demo"
    assert loaded.encode(SAMPLES[1]) == tok.encode(SAMPLES[1])


def test_python_split_agrees_with_tiktoken() -> None:
    # Training splits with the `regex` package; encoding splits in tiktoken's Rust. Same chunks means
    # encoding whole text equals encoding each regex chunk on its own.
    enc = train_bpe(_small_corpus(), 1000)
    split = regex.compile(SPLIT_PATTERN)
    for text in [*_small_corpus(), *itertools.islice(demo_corpus(), 3)]:
        by_chunk = [t for chunk in split.findall(text) for t in enc._encode_single_piece(chunk.encode())]
        assert enc.encode_ordinary(text) == by_chunk


def test_deterministic() -> None:
    a = train_bpe(_small_corpus(), 500)
    b = train_bpe(iter(_small_corpus()), 500)
    assert a._mergeable_ranks == b._mergeable_ranks


def test_reproduces_golden_rustbpe_tokenizer() -> None:
    # The golden tokenizer.pkl was trained by rustbpe on this text (README, "How the data was
    # produced"); its sha256 is recorded in expected.pt. Identical merges show the same algorithm
    # and tie-breaking.
    stdlib = sysconfig.get_paths()["stdlib"]
    names = ["json", "re", "os", "collections", "string", "argparse", "random", "itertools"]
    names += ["heapq", "csv", "difflib", "typing"]
    try:
        license_text = Path(stdlib, "LICENSE.txt").read_text(encoding="utf-8")
    except OSError:
        pytest.skip("this Python has no LICENSE.txt")
    texts = [license_text] + [importlib.import_module(n).__doc__ or "" for n in names]
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    if digest != "985cbc48a0ba0cf6557d92a98b0c12bf1cfbd92916b9fc600fbc9bd12d322829":
        pytest.skip("training text differs from CPython 3.11.7's")
    with open(GOLDEN / "2026-07" / "tokenizer.pkl", "rb") as f:
        golden = pickle.load(f)
    enc = train_bpe(texts, 300)
    assert enc._mergeable_ranks == golden._mergeable_ranks
    assert enc._special_tokens == golden._special_tokens


def test_too_small_vocab() -> None:
    with pytest.raises(ValueError, match="at least 265"):
        train_bpe(["abc"], 264)


def test_corpus_runs_out_of_pairs() -> None:
    # "abcd" allows exactly 3 merges (ab, abc, abcd or similar).
    with pytest.raises(ValueError, match="after 3 merges") as err:
        train_bpe(["abcd"], 256 + 9 + 4)
    assert "vocab_size=268" in str(err.value)
    assert train_bpe(["abcd"], 268).n_vocab == 268


def test_repeated_bytes_and_surrogates() -> None:
    enc = train_bpe(["aaaaaaa " * 50, "\ud800 lone surrogate", "zzzz"], 285)
    _assert_reachable(enc, 276)
    assert b"aaaa" in enc._mergeable_ranks and b"zzzz" in enc._mergeable_ranks
    assert enc.decode(enc.encode_ordinary("aaaaaaa aaa")) == "aaaaaaa aaa"


def test_demo_corpus_is_local_and_stable() -> None:
    first = list(itertools.islice(demo_corpus(), 5))
    again = list(itertools.islice(demo_corpus(), 5))
    assert first == again and all(isinstance(t, str) and t for t in first)
    total = sum(len(t.encode()) for t in demo_corpus())
    assert 1_000_000 < total < 8_000_000
    assert sum(len(t.encode()) for t in demo_corpus(max_bytes=10_000)) < 1_000_000


def test_train_32k_on_demo_corpus() -> None:
    if os.environ.get("NANOCHAT_SKIP_SLOW"):
        pytest.skip("NANOCHAT_SKIP_SLOW is set")
    t0 = time.perf_counter()
    enc = train_bpe(demo_corpus(), 32768)
    elapsed = time.perf_counter() - t0
    print(f"\ntrain_bpe(demo_corpus(), 32768): {elapsed:.1f} s")
    assert enc.n_vocab == 32768
    assert elapsed < 60
    _assert_reachable(enc, 32768 - len(SPECIAL_TOKENS))
    for text in SAMPLES:
        assert enc.decode(enc.encode_ordinary(text)) == text
