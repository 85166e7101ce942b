"""A pure-Python byte-level BPE trainer that yields nanochat-compatible tiktoken encodings.

Used to build a demo tokenizer offline (no rustbpe, no network). The algorithm is the standard one:
split text into chunks with SPLIT_PATTERN, start from the 256 single bytes, and repeatedly merge the
most frequent adjacent pair (ties: the numerically smallest pair, as rustbpe does). Merge ``k`` gets
rank ``256 + k``, which is exactly the priority tiktoken's encoder applies, so every learned token is
reachable by encoding its own bytes.

Pre-tokenization uses the ``regex`` package. tiktoken does not expose its Rust splitter, but it
depends on ``regex`` itself and uses it for the same purpose (``Encoding._encode_only_native_bpe``),
so the package is always installed alongside tiktoken and understands the same pattern syntax.
"""

from __future__ import annotations

import heapq
import os
import sysconfig
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

import tiktoken

from nanochat_gateway.model.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN

__all__ = ["demo_corpus", "train_bpe"]

Pair = tuple[int, int]


def _chunk_counts(texts: Iterable[str]) -> Counter[str]:
    """Count each distinct pre-tokenized chunk across ``texts``."""
    import regex  # tiktoken's own dependency; see the module docstring

    split = regex.compile(SPLIT_PATTERN).findall
    counts: Counter[str] = Counter()
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates: replace them exactly as tiktoken does before encoding.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        counts.update(split(text))
    return counts


def _learn_merges(words: list[list[int]], freqs: list[int], n_ranks: int) -> list[bytes]:
    """Run BPE on weighted byte sequences until ``n_ranks`` tokens exist; return token bytes by rank.

    ``words`` are modified in place. Pair counts are updated incrementally from the words a merge
    touches, found through an index pair -> words that (may) contain it.
    """
    pair_counts: defaultdict[Pair, int] = defaultdict(int)
    where: defaultdict[Pair, set[int]] = defaultdict(set)
    for wi, ids in enumerate(words):
        f = freqs[wi]
        for pair in zip(ids, ids[1:], strict=False):
            pair_counts[pair] += f
            where[pair].add(wi)
    # Max-heap by count with lazy deletion: an entry is live only while its count is current.
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]
    rank_of = {b: i for i, b in enumerate(vocab)}
    while len(vocab) < n_ranks:
        if not heap:
            raise ValueError(
                f"the corpus ran out of pairs after {len(vocab) - 256} merges, but this vocab_size "
                f"needs {n_ranks - 256}; at most vocab_size={len(vocab) + len(SPECIAL_TOKENS)} is possible"
            )
        negc, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negc:
            continue
        a, b = pair
        merged = vocab[a] + vocab[b]
        new = rank_of.get(merged)
        if new is None:
            new = len(vocab)
            vocab.append(merged)
            rank_of[merged] = new
        # Else two different pairs spell the same bytes; reuse the token so ranks stay unique.
        changed: set[Pair] = set()
        for wi in where.pop(pair):
            ids = words[wi]
            n = len(ids)
            f = freqs[wi]
            out: list[int] = []
            i = 0
            while i < n:
                try:
                    j = ids.index(a, i)
                except ValueError:
                    j = n
                if j >= n - 1:
                    out.extend(ids[i:])
                    break
                if ids[j + 1] != b:
                    out.extend(ids[i : j + 1])
                    i = j + 1
                    continue
                out.extend(ids[i:j])
                pair_counts[pair] -= f
                if out:
                    left = out[-1]
                    pair_counts[(left, a)] -= f
                    pair_counts[(left, new)] += f
                    where[(left, new)].add(wi)
                    changed.add((left, a))
                    changed.add((left, new))
                if j + 2 < n:
                    right = ids[j + 2]
                    pair_counts[(b, right)] -= f
                    pair_counts[(new, right)] += f
                    where[(new, right)].add(wi)
                    changed.add((b, right))
                    changed.add((new, right))
                out.append(new)
                i = j + 2
            if len(out) != n:
                words[wi] = out
        pair_counts.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                # No word holds this pair any more; drop it so the tables do not grow without bound.
                del pair_counts[p]
                where.pop(p, None)
    return vocab


def train_bpe(texts: Iterable[str], vocab_size: int, *, name: str = "rustbpe") -> tiktoken.Encoding:
    """Train a byte-level BPE on ``texts`` and return a nanochat-style tiktoken Encoding.

    The result has ``vocab_size - 9`` mergeable ranks (the 256 bytes, then the merges in order) and
    nanochat's 9 special tokens at ids ``vocab_size - 9 .. vocab_size - 1`` in SPECIAL_TOKENS order.
    Raises ValueError if vocab_size is too small or the corpus runs out of pairs to merge.
    """
    n_ranks = vocab_size - len(SPECIAL_TOKENS)
    if n_ranks < 256:
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    counts = _chunk_counts(texts)
    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, c in counts.items():
        raw = chunk.encode("utf-8")
        # One-byte chunks have no pairs; leaving them out keeps the index small.
        if len(raw) > 1:
            words.append(list(raw))
            freqs.append(c)
    vocab = _learn_merges(words, freqs, n_ranks)
    ranks = {token: rank for rank, token in enumerate(vocab)}
    specials = {tok: n_ranks + i for i, tok in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(
        name,
        pat_str=SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=specials,
        explicit_n_vocab=vocab_size,
    )


def demo_corpus(*, max_bytes: int = 4 * 1024 * 1024) -> Iterator[str]:
    """Yield the source of the running Python's standard library, in sorted file order.

    Top-level modules come first, then packages (tests and site-packages left out), so small
    budgets read what they always did. No network needed; the text (code, comments and
    docstrings) is stable for a given Python version. Stops after about ``max_bytes`` bytes.
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    total = 0
    for path in _stdlib_sources(stdlib):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        yield text
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            return


def _stdlib_sources(stdlib: str) -> Iterator[str]:
    names = sorted(os.listdir(stdlib))
    for name in names:
        path = os.path.join(stdlib, name)
        if name.endswith(".py") and os.path.isfile(path):
            yield path
    skip = {"site-packages", "test", "tests", "idlelib", "__pycache__"}
    for name in names:
        top = os.path.join(stdlib, name)
        if name in skip or not os.path.isdir(top):
            continue
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in skip)
            for fname in sorted(files):
                if fname.endswith(".py"):
                    yield os.path.join(root, fname)
