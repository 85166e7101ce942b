"""IncrementalDetokenizer: UTF-8 reassembly across tokens, silent control tokens, tool-call rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanochat_gateway.engine.detokenizer import IncrementalDetokenizer
from nanochat_gateway.model.tokenizer import NanochatTokenizer, load_tokenizer

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


@pytest.fixture(scope="module")
def tok() -> NanochatTokenizer:
    return load_tokenizer(GOLDEN / "2026-07" / "tokenizer.pkl")


def _stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detok.push(i) for i in ids] + [detok.flush()]


@pytest.mark.parametrize(
    "text",
    [
        "Grüße 🚀 東京",
        "Grüße aus Zürich! Ça va? naïve café, 東京タワー, Ελληνικά — rocket 🚀 and smile 😀",
        "👩‍👩‍👧 family, 🇨🇭 flag, e\u0301 combining",
        "plain ascii only",
    ],
)
def test_multibyte_characters_split_across_tokens(tok: NanochatTokenizer, text: str) -> None:
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    pieces = _stream(detok, ids)
    assert "".join(pieces) == text
    for piece in pieces:
        assert "\ufffd" not in piece
        # Every emitted piece is whole characters: it round-trips through UTF-8 on its own.
        assert piece.encode("utf-8").decode("utf-8") == piece
    if not text.isascii():
        # This small tokenizer has raw-byte tokens, so some pushes must have been held back.
        assert len(ids) > len(text.encode("utf-8")) // 2 and "" in pieces[:-1]


def test_character_emitted_exactly_when_complete(tok: NanochatTokenizer) -> None:
    detok = IncrementalDetokenizer(tok)
    rocket = "🚀".encode()
    assert [detok.push(b) for b in rocket] == ["", "", "", "🚀"]


def test_invalid_bytes_become_replacement_only_when_hopeless(tok: NanochatTokenizer) -> None:
    detok = IncrementalDetokenizer(tok)
    assert detok.push(0xFF) == "\ufffd"  # never valid in UTF-8
    assert detok.push(0xE6) == ""  # may still start a 3-byte character
    assert detok.push(0x9D) == ""
    assert detok.push(ord("A")) == "\ufffdA"  # now it cannot complete
    assert detok.push(0xF0) == ""
    assert detok.flush() == "\ufffd"
    assert detok.flush() == ""


def test_special_tokens_produce_no_text(tok: NanochatTokenizer) -> None:
    detok = IncrementalDetokenizer(tok)
    for token_id in (tok.bos_id, tok.user_start, tok.user_end, tok.assistant_start, tok.assistant_end):
        assert detok.push(token_id) == ""
    ids = [tok.bos_id, tok.assistant_start, *tok.encode("hi"), tok.assistant_end, tok.user_end]
    assert "".join(_stream(IncrementalDetokenizer(tok), ids)) == "hi"


def test_special_token_ends_a_partial_character(tok: NanochatTokenizer) -> None:
    detok = IncrementalDetokenizer(tok)
    assert detok.push(0xE6) == ""
    assert detok.push(tok.assistant_end) == "\ufffd"
    # The byte stream restarts: a continuation byte can no longer join the old lead byte.
    assert detok.push(0x9D) == "\ufffd"
    assert detok.flush() == ""


def _tool_call(
    tok: NanochatTokenizer, *, with_output: bool = True, after: list[int] | None = None
) -> list[int]:
    ids = [tok.assistant_start, *tok.encode("So "), tok.python_start, *tok.encode("12+30"), tok.python_end]
    if with_output:
        ids += [tok.output_start, *tok.encode("42"), tok.output_end]
    ids += after if after is not None else [*tok.encode(" done."), tok.assistant_end]
    return ids


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("inline", "So <<12+30=42>> done."), ("hidden", "So  done."), ("raw", "So 12+3042 done.")],
)
def test_tool_call_modes(tok: NanochatTokenizer, mode: str, expected: str) -> None:
    pieces = _stream(IncrementalDetokenizer(tok, tool_calls=mode), _tool_call(tok))  # type: ignore[arg-type]
    assert "".join(pieces) == expected


def test_inline_markers_arrive_with_their_tokens(tok: NanochatTokenizer) -> None:
    detok = IncrementalDetokenizer(tok)
    assert detok.push(tok.python_start) == "<<"
    assert detok.push(tok.encode("7")[0]) == "7"
    assert detok.push(tok.python_end) == ""  # the result may or may not follow
    assert detok.push(tok.output_start) == "="
    assert detok.push(tok.encode("7")[0]) == "7"
    assert detok.push(tok.output_end) == ">>"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("inline", "So <<12+30>> done."), ("hidden", "So  done."), ("raw", "So 12+30 done.")],
)
def test_tool_call_without_output(tok: NanochatTokenizer, mode: str, expected: str) -> None:
    ids = _tool_call(tok, with_output=False)
    assert "".join(_stream(IncrementalDetokenizer(tok, tool_calls=mode), ids)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ("assistant_end", "So <<12+30>>"),
        ("python_start", "So <<12+30>><<>>"),  # a second call opens; flush closes it
        ("nothing", "So <<12+30>>"),
    ],
)
def test_python_end_closed_by_other_tokens(tok: NanochatTokenizer, after: str, expected: str) -> None:
    tail = [] if after == "nothing" else [getattr(tok, after)]
    ids = _tool_call(tok, with_output=False, after=tail)
    assert "".join(_stream(IncrementalDetokenizer(tok), ids)) == expected


def test_unterminated_tool_call_is_closed_at_flush(tok: NanochatTokenizer) -> None:
    ids = [tok.python_start, *tok.encode("1+")]
    assert "".join(_stream(IncrementalDetokenizer(tok), ids)) == "<<1+>>"
    assert "".join(_stream(IncrementalDetokenizer(tok, tool_calls="hidden"), ids)) == ""
    assert "".join(_stream(IncrementalDetokenizer(tok, tool_calls="raw"), ids)) == "1+"


def test_hidden_mode_drops_partial_bytes_inside_tool(tok: NanochatTokenizer) -> None:
    detok = IncrementalDetokenizer(tok, tool_calls="hidden")
    assert detok.push(tok.python_start) == ""
    assert detok.push(0xE6) == ""
    assert detok.push(tok.python_end) == ""
    assert detok.flush() == ""


def test_stray_output_block_is_balanced(tok: NanochatTokenizer) -> None:
    ids = [tok.output_start, *tok.encode("5"), tok.output_end, *tok.encode("!")]
    assert "".join(_stream(IncrementalDetokenizer(tok), ids)) == "<<=5>>!"
    # Stray closing tokens alone produce nothing.
    ids = [tok.python_end, tok.output_end, *tok.encode("ok")]
    assert "".join(_stream(IncrementalDetokenizer(tok), ids)) == "ok"


def test_matches_full_decode_for_golden_conversation_text(tok: NanochatTokenizer) -> None:
    chat = json.loads((GOLDEN / "2026-07" / "chat.json").read_text(encoding="utf-8"))
    for conv in chat["conversations"]:
        ids = conv["render_for_completion_ids"]
        expected = tok.decode([i for i in ids if not tok.is_special(i)])
        assert "".join(_stream(IncrementalDetokenizer(tok), ids)) == expected


def test_rejects_unknown_mode(tok: NanochatTokenizer) -> None:
    with pytest.raises(ValueError, match="tool_calls"):
        IncrementalDetokenizer(tok, tool_calls="xml")  # type: ignore[arg-type]
