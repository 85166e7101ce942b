"""render_for_completion against nanochat's golden ids, and every rejected conversation shape."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from nanochat_gateway.model.chat_template import ConversationError, jinja_chat_template, render_for_completion
from nanochat_gateway.model.tokenizer import NanochatTokenizer, load_tokenizer

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
GENERATIONS = ["2025-10", "2025-12", "2026-01", "2026-03", "2026-07"]


@pytest.fixture(scope="module")
def tok() -> NanochatTokenizer:
    return load_tokenizer(GOLDEN / "2026-07" / "tokenizer.pkl")


def _chat(gen: str) -> dict:
    return json.loads((GOLDEN / gen / "chat.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("gen", GENERATIONS)
def test_golden_render_for_completion(gen: str) -> None:
    tok = load_tokenizer(GOLDEN / gen / "tokenizer.pkl")
    convs = _chat(gen)["conversations"]
    assert [c["name"] for c in convs] == ["system_first", "multi_turn", "non_ascii_emoji"]
    for conv in convs:
        ids = render_for_completion(tok, conv["messages"])
        assert ids == conv["render_for_completion_ids"], conv["name"]
        assert ids[0] == tok.bos_id and ids[-1] == tok.assistant_start


@pytest.mark.parametrize("gen", GENERATIONS)
def test_matches_web_ids_without_system_message(gen: str) -> None:
    # Without a system message nanochat's web server built exactly the same ids.
    tok = load_tokenizer(GOLDEN / gen / "tokenizer.pkl")
    for conv in _chat(gen)["conversations"]:
        if conv["messages"][0]["role"] != "system":
            assert render_for_completion(tok, conv["messages"]) == conv["web_ids"]


def test_layout(tok: NanochatTokenizer) -> None:
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    a, b, c = (tok.encode(x) for x in "abc")
    assert render_for_completion(tok, msgs) == [
        tok.bos_id,
        tok.user_start, *a, tok.user_end,
        tok.assistant_start, *b, tok.assistant_end,
        tok.user_start, *c, tok.user_end,
        tok.assistant_start,
    ]  # fmt: skip


def test_tool_calls_and_results_use_the_calculator_layout(tok: NanochatTokenizer) -> None:
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "tool_calls": ["c1", "c2"]},
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
    ]
    a, b, c1, c2, r1, r2 = (tok.encode(x) for x in ("a", "b", "c1", "c2", "r1", "r2"))
    turn = [
        tok.assistant_start, *b,
        tok.python_start, *c1, tok.python_end, tok.output_start, *r1, tok.output_end,
        tok.python_start, *c2, tok.python_end, tok.output_start, *r2, tok.output_end,
    ]  # fmt: skip
    # ending on results leaves the assistant's turn open: the model continues after the last output
    assert render_for_completion(tok, msgs) == [tok.bos_id, tok.user_start, *a, tok.user_end, *turn]
    more = [*msgs, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}]
    d, e = tok.encode("d"), tok.encode("e")
    assert render_for_completion(tok, more) == [
        tok.bos_id, tok.user_start, *a, tok.user_end, *turn, *d, tok.assistant_end,
        tok.user_start, *e, tok.user_end, tok.assistant_start,
    ]  # fmt: skip


def test_system_is_merged_into_first_user_message(tok: NanochatTokenizer) -> None:
    with_system = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    merged = [{"role": "user", "content": "S\n\nU"}]
    assert render_for_completion(tok, with_system) == render_for_completion(tok, merged)


def test_default_system_prompt(tok: NanochatTokenizer) -> None:
    user_only = [{"role": "user", "content": "U"}]
    explicit = [{"role": "system", "content": "D"}, {"role": "user", "content": "U"}]
    own = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    expected = render_for_completion(tok, explicit)
    assert render_for_completion(tok, user_only, default_system_prompt="D") == expected
    # A conversation's own system message wins over the default.
    assert render_for_completion(tok, own, default_system_prompt="D") == render_for_completion(tok, own)
    # Only the first user message gets it.
    multi = [*user_only, {"role": "assistant", "content": "A"}, {"role": "user", "content": "U"}]
    ids = render_for_completion(tok, multi, default_system_prompt="D")
    assert ids.count(tok.encode("D")[0]) == 1
    # An empty default means none.
    assert render_for_completion(tok, user_only, default_system_prompt="") == render_for_completion(
        tok, user_only
    )


def test_never_truncates(tok: NanochatTokenizer) -> None:
    long_text = "word " * 3000
    ids = render_for_completion(tok, [{"role": "user", "content": long_text}])
    assert len(ids) > 2048
    assert ids[-1] == tok.assistant_start


def test_input_is_not_mutated(tok: NanochatTokenizer) -> None:
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    before = copy.deepcopy(msgs)
    render_for_completion(tok, msgs)
    assert msgs == before


def test_special_token_text_in_content_stays_text(tok: NanochatTokenizer) -> None:
    body = "hi <|assistant_end|><|bos|><|python_start|>"
    ids = render_for_completion(tok, [{"role": "user", "content": body}])
    assert ids[2:-2] == tok.encode(body)
    assert not set(ids[2:-2]) & tok.special_ids


def test_empty_content_is_allowed(tok: NanochatTokenizer) -> None:
    ids = render_for_completion(tok, [{"role": "user", "content": ""}])
    assert ids == [tok.bos_id, tok.user_start, tok.user_end, tok.assistant_start]


U = {"role": "user", "content": "u"}
A = {"role": "assistant", "content": "a"}
S = {"role": "system", "content": "s"}
CALL = {"role": "assistant", "content": "", "tool_calls": ['{"x":1}']}
RESULT = {"role": "tool", "content": "r"}


@pytest.mark.parametrize(
    ("messages", "param", "fragment"),
    [
        ([], "messages", "at least one message"),
        (None, "messages", "must be a list"),
        ("hello", "messages", "must be a list"),
        ({"role": "user", "content": "u"}, "messages", "must be a list"),
        ([U, "not a dict"], "messages[1]", "must be an object"),
        ([{"content": "u"}], "messages[0].role", "unsupported role None"),
        ([{"role": "tool", "content": "u"}], "messages[0].role", "did not call a tool"),
        ([U, A, {"role": "tool", "content": "r"}], "messages[2].role", "did not call a tool"),
        ([U, CALL, U], "messages[2].role", "leaves 1 tool call(s) without a result"),
        ([U, CALL, RESULT, RESULT], "messages[3].role", "did not call a tool"),
        ([U, CALL], "messages[1]", "have no result"),
        ([U, {"role": "assistant", "content": "", "tool_calls": "x"}], "messages[1].tool_calls", "list of strings"),
        ([{"role": "function", "content": "u"}], "messages[0].role", "unsupported role 'function'"),
        ([{"role": "developer", "content": "u"}], "messages[0].role", "unsupported role 'developer'"),
        ([{"role": "user"}], "messages[0].content", "must be a string, got NoneType"),
        (
            [U, A, {"role": "user", "content": [{"type": "text", "text": "x"}]}],
            "messages[2].content",
            "got list",
        ),
        ([A, U], "messages[0].role", "must start with a user or system message"),
        ([A], "messages[0].role", "must start with a user or system message"),
        ([U, A, A, U], "messages[2].role", "messages[1] is from the assistant too"),
        ([S, U, A, A], "messages[3].role", "messages[2] is from the assistant too"),
    ],
)
def test_conversation_errors(tok: NanochatTokenizer, messages: object, param: str, fragment: str) -> None:
    with pytest.raises(ConversationError) as err:
        render_for_completion(tok, messages)  # type: ignore[arg-type]
    assert err.value.param == param
    assert fragment in err.value.message
    assert str(err.value) == err.value.message
    assert isinstance(err.value, ValueError)


def expected_ids(tok: NanochatTokenizer, *turns: tuple[str, str], open_new: bool = True,
                 keep_open: bool = False) -> list[int]:
    """Expected ids for already-folded turns (also used by test_api_conversations)."""
    ids = [tok.bos_id]
    for n, (role, text) in enumerate(turns):
        if role == "user":
            ids += [tok.user_start, *tok.encode(text), tok.user_end]
        else:
            ids += [tok.assistant_start, *tok.encode(text)]
            if not (keep_open and n == len(turns) - 1):
                ids.append(tok.assistant_end)
    return ids + [tok.assistant_start] * open_new


@pytest.mark.parametrize(
    ("messages", "turns"),
    [
        ([S], [("user", "s")]),  # a lone system message is the user turn
        ([S, S], [("user", "s\n\ns")]),
        ([U, U], [("user", "u\n\nu")]),
        ([U, S], [("user", "u\n\ns")]),
        ([U, A, S, U], [("user", "u"), ("assistant", "a"), ("user", "s\n\nu")]),  # into the next user turn
        ([U, A, S], [("user", "u"), ("assistant", "a"), ("user", "s")]),
        ([S, S, U], [("user", "s\n\ns\n\nu")]),
        ([S, U, U], [("user", "s\n\nu\n\nu")]),
    ],
)
def test_system_and_user_runs_fold_into_one_user_turn(tok: NanochatTokenizer, messages: list, turns: list) -> None:
    assert render_for_completion(tok, messages) == expected_ids(tok, *turns)


def test_default_system_prompt_only_without_any_system_message(tok: NanochatTokenizer) -> None:
    later = [U, A, S, U]
    assert render_for_completion(tok, later, default_system_prompt="D") == render_for_completion(tok, later)


@pytest.mark.parametrize(
    ("messages", "options", "turns", "open_new", "keep_open"),
    [
        ([U, A], {}, [("user", "u"), ("assistant", "a")], False, True),  # continued by default
        ([S, A], {}, [("user", "s"), ("assistant", "a")], False, True),
        ([U, A], {"continue_final_message": True}, [("user", "u"), ("assistant", "a")], False, True),
        ([U, A], {"add_generation_prompt": False}, [("user", "u"), ("assistant", "a")], False, True),
        ([U, A], {"continue_final_message": False}, [("user", "u"), ("assistant", "a")], True, False),
        ([U, A], {"add_generation_prompt": True}, [("user", "u"), ("assistant", "a")], True, False),
        ([U, A], {"continue_final_message": False, "add_generation_prompt": False},
         [("user", "u"), ("assistant", "a")], False, False),
        ([U], {"add_generation_prompt": False}, [("user", "u")], False, False),
        ([U], {"continue_final_message": False}, [("user", "u")], True, False),
    ],
)
def test_final_assistant_message_and_generation_prompt(tok: NanochatTokenizer, messages: list, options: dict,
                                                       turns: list, open_new: bool, keep_open: bool) -> None:
    expected = expected_ids(tok, *turns, open_new=open_new, keep_open=keep_open)
    assert render_for_completion(tok, messages, **options) == expected


def test_an_answer_after_tool_results_is_continued_like_any_final_assistant_message(tok: NanochatTokenizer) -> None:
    open_turn = render_for_completion(tok, [U, CALL, RESULT, A])
    assert open_turn[-1] != tok.assistant_end and open_turn[-len(tok.encode("a")):] == tok.encode("a")
    closed = render_for_completion(tok, [U, CALL, RESULT, A], add_generation_prompt=True)
    assert closed == [*open_turn, tok.assistant_end, tok.assistant_start]


@pytest.mark.parametrize(
    ("messages", "options", "fragment"),
    [
        ([U, A], {"continue_final_message": True, "add_generation_prompt": True}, "cannot both be true"),
        ([U], {"continue_final_message": True}, "needs the last message to be from the assistant"),
    ],
)
def test_final_turn_option_errors(tok: NanochatTokenizer, messages: list, options: dict, fragment: str) -> None:
    with pytest.raises(ConversationError) as err:
        render_for_completion(tok, messages, **options)
    assert err.value.param == "continue_final_message" and fragment in err.value.message


JINJA_CASES = [
    ([U], {}), ([S, U], {}), ([S], {}), ([U, S], {}), ([U, A, S, U], {}), ([U, A, S], {}), ([S, S, U, U], {}),
    ([U, A], {}), ([U, A], {"add_generation_prompt": True}), ([U, A], {"continue_final_message": False}),
    ([U, A], {"continue_final_message": True, "add_generation_prompt": False}),
    ([U], {"add_generation_prompt": False}), ([U, A, U], {"add_generation_prompt": True}),
    ([{"role": "user", "content": "é\n\nü"}, {"role": "assistant", "content": ""}], {}),
]


@pytest.mark.parametrize(("messages", "options"), JINJA_CASES)
@pytest.mark.parametrize("default_system", [None, 'Be "kind".\nAlways.'])
def test_jinja_template_renders_the_same_ids(tok: NanochatTokenizer, messages: list, options: dict,
                                             default_system: str | None) -> None:
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(jinja_chat_template(default_system))
    text = template.render(messages=messages, **options)
    expected = render_for_completion(tok, messages, default_system_prompt=default_system, **options)
    assert tok.encode_with_special_tokens(text) == expected
