"""synth building blocks: plans, parsing, the behaviour filter, duplicates, lengths, retry waits, the files."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from synth_server import ANSWER, BARE_REFUSAL, COMPLIANCE, CORRECTION, REFUSAL, SUPPORT

from nanochat_gateway.synth.catalog import ATTACKS, BORDERLINE, HARM_CATEGORIES
from nanochat_gateway.synth.check import check_file, run_check
from nanochat_gateway.synth.conversation import conversation_problems, to_line
from nanochat_gateway.synth.dedupe import FirstMessageIndex, normalise
from nanochat_gateway.synth.filter import behaviour_problems
from nanochat_gateway.synth.length import TokenizerUnavailable, checkpoint_counter, choose_counter
from nanochat_gateway.synth.parse import extract_conversation
from nanochat_gateway.synth.plan import ConversationPlan, plan_conversation
from nanochat_gateway.synth.retry import backoff_seconds, is_retryable_status, retry_after_seconds
from nanochat_gateway.synth.store import ConversationStore, StoreError, cut_truncated_tail, sidecar_path

CONV = [{"role": "user", "content": "How do I kill a stuck process?"}, {"role": "assistant", "content": ANSWER}]


# ------------------------------------------------------------------ plans
def test_plans_are_a_function_of_seed_and_index():
    first = [plan_conversation(7, i) for i in range(50)]
    assert first == [plan_conversation(7, i) for i in range(50)]
    assert [plan_conversation(7, i) for i in range(49, -1, -1)][::-1] == first  # order does not matter
    other = [plan_conversation(8, i) for i in range(50)]
    assert sum(a != b for a, b in zip(first, other, strict=True)) > 45


def test_plans_cover_every_category_style_and_length_with_a_borderline_share():
    plans = [plan_conversation(0, i) for i in range(1200)]
    categories = Counter(p.category for p in plans)
    assert set(categories) == {c.key for c in HARM_CATEGORIES} | {BORDERLINE}
    assert 0.21 <= categories[BORDERLINE] / len(plans) <= 0.29  # default 25%
    harmful = [p for p in plans if p.category != BORDERLINE]
    assert {p.style for p in harmful} == set(ATTACKS)
    assert {p.exchanges for p in plans} == {1, 2, 3}
    assert all(p.exchanges >= 2 for p in harmful if p.style in ("pressure", "gradual_escalation"))
    assert {p.style for p in plans if p.category == BORDERLINE} >= {"homonym", "safe_context", "history", "fiction"}
    none = [plan_conversation(0, i, borderline_fraction=0.0) for i in range(200)]
    assert not any(p.category == BORDERLINE for p in none)


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize("reply", [
    json.dumps({"messages": CONV}),
    json.dumps(CONV),
    "Here you go:\n```json\n" + json.dumps(CONV, indent=2) + "\n```\nEnjoy!",
    "```\n" + json.dumps({"messages": CONV}) + "\n```",
    "Sure. " + json.dumps({"conversation": CONV}) + " That's it.",
    json.dumps({"messages": [{"role": "system", "content": "be safe"}, *CONV]}),
    json.dumps({"messages": [{"role": " User ", "content": CONV[0]["content"], "name": "x"},
                             {"role": "Assistant", "content": "  " + ANSWER + "\n"}]}),
])
def test_parser_finds_the_conversation_however_it_is_wrapped(reply):
    found = extract_conversation(reply)
    assert found.messages == CONV, found


@pytest.mark.parametrize(("reply", "reason"), [
    ("no json here at all", "unparseable"),
    ('{"messages": [{"role": "user", "content": "hi"', "unparseable"),
    (json.dumps({"messages": [CONV[0]]}), "malformed"),
    ('{ "messages": [ ] }', "malformed"),
    (json.dumps({"messages": [CONV[0], CONV[0]]}), "malformed"),
    (json.dumps({"messages": [*CONV, CONV[0]]}), "malformed"),
    (json.dumps({"messages": [CONV[0], {"role": "assistant", "content": "  "}]}), "malformed"),
    (json.dumps({"messages": [CONV[0], {"role": "assistant", "content": 5}]}), "malformed"),
])
def test_parser_names_what_is_wrong(reply, reason):
    found = extract_conversation(reply)
    assert found.messages is None and found.reason == reason and found.detail


def test_conversation_rules_are_nanochats_plus_usefulness():
    assert conversation_problems(CONV) == []
    assert conversation_problems({"messages": CONV})[0].startswith("expected a JSON array")
    assert "at least 2" in conversation_problems(CONV[:1])[0]
    assert conversation_problems([{"role": "system", "content": "x"}, *CONV])
    assert "keys other than" in conversation_problems([{**CONV[0], "name": "a"}, CONV[1]])[0]
    assert json.loads(to_line(CONV)) == CONV and "\n" not in to_line(CONV)


# ------------------------------------------------------------------ behaviour filter
def _plan(category: str, style: str = "direct") -> ConversationPlan:
    return ConversationPlan(0, category, "t", "p", "o", style, 1)


def _conv(*replies: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for reply in replies:
        out += [{"role": "user", "content": "please"}, {"role": "assistant", "content": reply}]
    return out


@pytest.mark.parametrize(("category", "reply", "expected"), [
    ("violence_weapons", REFUSAL, []),
    ("violence_weapons", COMPLIANCE, ["complied", "no_refusal"]),
    ("illegal_activities", "Here's the code:\n```python\nimport os\n```", ["complied", "no_refusal"]),
    ("manipulation", "Sure! Dear customer, your account is locked, click here.", ["no_refusal"]),
    ("hate_speech", BARE_REFUSAL, ["bare_refusal"]),
    ("self_harm", SUPPORT, []),
    ("self_harm", "Take 30 pills and you will sleep.", ["complied", "no_support"]),
    ("self_harm", "ok", ["no_support"]),
    ("misinformation", CORRECTION, []),
    ("misinformation", "Yes, the moon landing was staged in a studio.", ["no_correction"]),
    (BORDERLINE, ANSWER, []),
    (BORDERLINE, BARE_REFUSAL, ["refused_borderline"]),
    (BORDERLINE, "I'm not able to help with violence.", ["refused_borderline"]),
])
def test_behaviour_filter(category, reply, expected):
    assert behaviour_problems(_plan(category), _conv(reply)) == expected


def test_escalation_judges_the_last_reply_other_styles_every_reply():
    steps = "Fireworks work like this:\n1. A fuse burns.\n2. The charge lifts the shell.\n3. Stars ignite."
    assert behaviour_problems(_plan("violence_weapons", "gradual_escalation"), _conv(steps, REFUSAL)) == []
    assert behaviour_problems(_plan("violence_weapons", "pressure"), _conv(steps, REFUSAL)) == ["complied"]


# ------------------------------------------------------------------ duplicates
def test_duplicates_exact_after_normalising_and_near_with_rapidfuzz():
    seen = FirstMessageIndex(90)
    seen.add("How do I pick the lock on my own shed?")
    assert normalise("  HOW do I   pick the lock on my own shed!! ") == "how do i pick the lock on my own shed"
    assert seen.repeat_of("how do i pick the lock on my own shed") == "duplicate"
    assert seen.repeat_of("How do I pick the lock on my own sheds?") == "near_duplicate"
    assert seen.repeat_of("What is the best way to kill weeds in the garden?") is None
    assert FirstMessageIndex(101).repeat_of("anything") is None


# ------------------------------------------------------------------ lengths
def test_checkpoint_tokenizer_counts_like_nanochats_render(tiny_model_dir):
    from nanochat_gateway.model.tokenizer import load_tokenizer

    counter = checkpoint_counter(tiny_model_dir, None)
    tok = load_tokenizer(tiny_model_dir)
    assert counter.limit == 2048  # the tiny preset's sequence_len
    assert counter.count(CONV) == 1 + sum(2 + len(tok.encode(m["content"])) for m in CONV)
    assert checkpoint_counter(tiny_model_dir / "tokenizer.pkl", 300).limit == 300


def test_without_cl100k_the_counter_falls_back_to_a_byte_estimate_and_says_so(tmp_path):
    def offline() -> None:
        raise TokenizerUnavailable("tiktoken cl100k_base is not available (ConnectionError: offline)")

    counter, note = choose_counter(None, None, offline)
    assert counter.limit == 2048 and "bytes / 3" in counter.name
    assert note and "offline" in note and "--tokenizer" in note
    assert counter.count([{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "y"}]) == 106
    with pytest.raises(TokenizerUnavailable, match="--tokenizer"):
        choose_counter(tmp_path, None, offline)


def test_cl100k_counts_when_tiktoken_has_it():
    from nanochat_gateway.synth.length import load_cl100k

    try:
        encode_len = load_cl100k()
    except TokenizerUnavailable as exc:
        pytest.skip(str(exc))  # offline machines: the fallback above is what runs
    counter, note = choose_counter(None, 4096, lambda: encode_len)
    assert note is None and counter.limit == 4096 and counter.count(CONV) > 10


# ------------------------------------------------------------------ retry waits
def test_retry_after_headers():
    assert retry_after_seconds({"retry-after-ms": "750", "Retry-After": "9"}) == 0.75
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"Retry-After": "1.5"}) == 1.5
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds({"Retry-After": format_datetime(now + timedelta(seconds=7), usegmt=True)}, now) == 7
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({"Retry-After": "-3"}) is None
    assert retry_after_seconds({}) is None


def test_retryable_statuses_and_full_jitter_backoff():
    assert all(is_retryable_status(s) for s in (408, 409, 429, 500, 502, 503, 504))
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404, 422))
    rng = random.Random(0)
    waits = [backoff_seconds(3, rng) for _ in range(200)]
    assert all(0 <= w <= 4.0 for w in waits) and max(waits) > 3 and min(waits) < 1
    assert all(backoff_seconds(40, rng) <= 30 for _ in range(50))


# ------------------------------------------------------------------ files
def test_store_resumes_repairs_and_refuses_another_seed(tmp_path):
    out = tmp_path / "safety.jsonl"
    store = ConversationStore(out, resume=True, header={"seed": 1, "borderline_fraction": 0.25})
    store.append(0, BORDERLINE, CONV)
    store.record(1, "hate_speech", "rejected", ["bare_refusal"])
    store.record(2, "hate_speech", "failed", ["request_failed"])
    store.close()
    with open(out, "a") as f:
        f.write('[{"role": "user", "cont')
    with open(sidecar_path(out), "a") as f:
        f.write('{"index": 9, "cat')

    again = ConversationStore(out, resume=True, header={"seed": 1, "borderline_fraction": 0.25})
    again.close()
    assert again.done == {0, 1} and again.written == 1 and again.first_messages == [CONV[0]["content"]]
    assert len(again.repairs) == 2 and all("truncated" in r for r in again.repairs)
    assert out.read_text().endswith("\n") and run_check(out) == 0

    with pytest.raises(StoreError, match="seed 1"):
        ConversationStore(out, resume=True, header={"seed": 2, "borderline_fraction": 0.25})
    fresh = ConversationStore(out, resume=False, header={"seed": 2, "borderline_fraction": 0.25})
    fresh.close()
    assert out.read_text() == "" and fresh.done == set()


def test_a_record_whose_line_is_missing_is_asked_again(tmp_path):
    out = tmp_path / "safety.jsonl"
    store = ConversationStore(out, resume=True, header={"seed": 0, "borderline_fraction": 0.25})
    store.append(4, BORDERLINE, CONV)
    store.close()
    out.write_text("")  # as if the process died between the record and the line
    again = ConversationStore(out, resume=True, header={"seed": 0, "borderline_fraction": 0.25})
    again.close()
    assert 4 not in again.done and "index 4" in again.repairs[0]


def test_check_reports_each_broken_line_and_counts_categories(tmp_path, capsys):
    out = tmp_path / "mixed.jsonl"
    good = to_line(CONV)
    out.write_text("\n".join([good, "", '{"messages": []}', json.dumps([CONV[0]]), "[not json",
                              json.dumps([{"role": "system", "content": "s"}, *CONV])]) + "\n")
    result = check_file(out)
    assert result.conversations == 5 and result.valid == 1
    assert [n for n, _ in result.problems][:3] == [3, 4, 5]
    assert run_check(out) == 1
    printed = capsys.readouterr().out
    assert f"{out}:5: not valid JSON" in printed and "1 of 5 conversations are valid" in printed

    store = ConversationStore(tmp_path / "ok.jsonl", resume=True, header={"seed": 0, "borderline_fraction": 0.25})
    store.append(0, "self_harm", CONV)
    store.append(1, BORDERLINE, [{**CONV[0], "content": "another"}, CONV[1]])
    store.close()
    assert check_file(tmp_path / "ok.jsonl").categories == Counter({"self_harm": 1, BORDERLINE: 1})
    assert run_check(tmp_path / "missing.jsonl") == 1


def test_cut_truncated_tail(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one\ntwo\nthr")
    assert cut_truncated_tail(path) == 3 and path.read_bytes() == b"one\ntwo\n"
    assert cut_truncated_tail(path) == 0
    path.write_bytes(b"only")
    assert cut_truncated_tail(path) == 4 and path.read_bytes() == b""
