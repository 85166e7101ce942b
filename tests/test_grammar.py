"""Grammar compilation and token masking (engine/grammar.py, engine/token_mask.py).

Random walks stand in for a model: random logits, masked, sampled, fed back. Every walk
that completes must decode to JSON that validates against its schema.
"""

from __future__ import annotations

import asyncio
import json

import jsonschema
import numpy as np
import pytest
import torch

from conftest import GOLDEN
from nanochat_gateway.bench.structured import RECORD_SCHEMA
from nanochat_gateway.engine.grammar import (
    JSON_OBJECT_SCHEMA,
    GrammarCompiler,
    GrammarError,
    GrammarLimits,
    ToolFunction,
    tool_call_schema,
)
from nanochat_gateway.engine.token_mask import RowGrammar, TokenMasker
from nanochat_gateway.model.tokenizer import NanochatTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def golden_tokenizer() -> NanochatTokenizer:
    return load_tokenizer(GOLDEN / "2026-07" / "tokenizer.pkl")


@pytest.fixture(scope="module")
def demo_tokenizer(tiny_model_dir) -> NanochatTokenizer:
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(params=["golden", "demo"])
def tokenizer(request, golden_tokenizer, demo_tokenizer) -> NanochatTokenizer:
    return golden_tokenizer if request.param == "golden" else demo_tokenizer


def walk(tokenizer: NanochatTokenizer, grammar, masker: TokenMasker, seed: int, max_steps: int = 300):
    """Sample a masked random walk; returns (text, how it ended)."""
    rng = torch.Generator().manual_seed(seed)
    row = RowGrammar(grammar)
    ends = {tokenizer.assistant_end, tokenizer.bos_id}
    out: list[int] = []
    for _ in range(max_steps):
        logits = torch.randn(1, masker.vocab_size, generator=rng) * 4
        masker.apply(logits, [row])
        token = int(torch.multinomial(torch.softmax(logits[0], -1), 1, generator=rng))
        if token in ends:
            return tokenizer.decode(out), "end"
        assert row.accept(token), "a token the mask allowed was refused"
        out.append(token)
        if row.complete:
            return tokenizer.decode(out), "complete"
    return tokenizer.decode(out), "length"


def test_json_object_walks_give_json_objects(tokenizer):
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size)
    grammar = compiler.compile(JSON_OBJECT_SCHEMA)
    masker = TokenMasker(tokenizer.vocab_size, threads=1)
    finished = 0
    for seed in range(20):
        text, how = walk(tokenizer, grammar, masker, seed)
        if how != "length":
            finished += 1
            assert isinstance(json.loads(text), dict), text
    assert finished >= 5


def test_schema_walks_validate(tokenizer):
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size)
    grammar = compiler.compile(RECORD_SCHEMA)
    masker = TokenMasker(tokenizer.vocab_size, threads=1)
    for seed in range(15):
        text, how = walk(tokenizer, grammar, masker, seed, max_steps=600)
        assert how == "complete", text
        jsonschema.validate(json.loads(text), RECORD_SCHEMA)


def test_tool_choice_among_functions(demo_tokenizer):
    functions = [
        ToolFunction("get_weather", {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                                     "required": ["city"], "additionalProperties": False}),
        ToolFunction("add", {"type": "object", "properties": {"a": {"type": "integer", "maximum": 99},
                                                              "b": {"type": "integer", "maximum": 99}},
                             "required": ["a", "b"], "additionalProperties": False}),
    ]
    schema = tool_call_schema(functions)
    compiler = GrammarCompiler(demo_tokenizer, demo_tokenizer.vocab_size)
    masker = TokenMasker(demo_tokenizer.vocab_size, threads=1)
    names = set()
    for seed in range(12):
        text, how = walk(demo_tokenizer, compiler.compile(schema), masker, seed)
        assert how == "complete", text
        call = json.loads(text)
        names.add(call["name"])
        parameters = next(f.parameters for f in functions if f.name == call["name"])
        jsonschema.validate(call["arguments"], parameters)
    assert names == {"get_weather", "add"}
    assert tool_call_schema(functions[:1]) is functions[0].parameters


def test_mask_forbids_exactly_what_the_grammar_forbids(golden_tokenizer):
    tok = golden_tokenizer
    grammar = GrammarCompiler(tok, tok.vocab_size).compile(JSON_OBJECT_SCHEMA)
    row = RowGrammar(grammar)
    logits = torch.randn(3, tok.vocab_size)
    original = logits.clone()
    TokenMasker(tok.vocab_size).apply(logits, [None, row, None])
    assert torch.equal(logits[0], original[0]) and torch.equal(logits[2], original[2])
    allowed = torch.isfinite(logits[1])
    assert torch.equal(logits[1][allowed], original[1][allowed])
    # the first token must open the object: exactly the tokens whose bytes start with "{"
    expected = [t for t in range(tok.vocab_size) if not tok.is_special(t) and tok.token_bytes(t).startswith(b"{")]
    assert allowed.nonzero().flatten().tolist() == expected
    assert np.array_equal(row.allowed(tok.vocab_size), allowed.numpy())


def test_complete_refuse_and_end_tokens(golden_tokenizer):
    tok = golden_tokenizer
    row = RowGrammar(GrammarCompiler(tok, tok.vocab_size).compile(JSON_OBJECT_SCHEMA))
    assert not row.accept(tok.encode("x")[0])  # refused, state unchanged
    assert not row.accept(tok.python_start)  # special tokens never fit JSON
    for token in tok.encode('{"a": [1, 2]}'):
        assert not row.complete
        assert row.accept(token)
    assert row.complete
    allowed = row.allowed(tok.vocab_size)
    assert set(np.flatnonzero(allowed).tolist()) == {tok.assistant_end, tok.bos_id}


def test_integer_grammar_allows_end_only_when_accepting(golden_tokenizer):
    tok = golden_tokenizer
    row = RowGrammar(GrammarCompiler(tok, tok.vocab_size).compile({"type": "integer"}))
    assert not row.allowed(tok.vocab_size)[tok.assistant_end]
    assert row.accept(tok.encode("7")[0])
    assert row.allowed(tok.vocab_size)[tok.assistant_end] and not row.complete  # "7" may go on: "71"


def test_padded_vocabulary_ids_are_never_allowed(golden_tokenizer):
    tok = golden_tokenizer
    width = tok.vocab_size + 20  # logits wider than the tokenizer, as padded checkpoints may give
    row = RowGrammar(GrammarCompiler(tok, width).compile({"type": "string"}))
    logits = torch.zeros(1, width)
    TokenMasker(width).apply(logits, [row])
    assert torch.isinf(logits[0, tok.vocab_size:]).all()
    assert torch.isfinite(logits[0, : tok.vocab_size]).any()


def test_all_rows_constrained_and_copies_are_independent(golden_tokenizer):
    tok = golden_tokenizer
    grammar = GrammarCompiler(tok, tok.vocab_size).compile(JSON_OBJECT_SCHEMA)
    a, b = RowGrammar(grammar), RowGrammar(grammar)
    assert a.accept(tok.encode("{")[0])
    logits = torch.zeros(2, tok.vocab_size)
    TokenMasker(tok.vocab_size).apply(logits, [a, b])
    assert not torch.equal(torch.isfinite(logits[0]), torch.isfinite(logits[1]))
    assert not torch.isfinite(logits[1, tok.encode("}")[0]])  # b has not opened its object


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"not": {"type": "string"}}, "not"),
        ({"type": "object", "properties": {"a": {"type": "string", "format": "shoe-size"}}}, "shoe-size"),
        ({"type": "sometimes"}, "sometimes"),
        ({"$ref": "#/$defs/missing"}, "missing"),
    ],
)
def test_bad_schemas_are_refused_with_the_reason(golden_tokenizer, schema, words):
    compiler = GrammarCompiler(golden_tokenizer, golden_tokenizer.vocab_size)
    with pytest.raises(GrammarError, match=words):
        compiler.compile(schema)
    with pytest.raises(GrammarError, match=words):  # a refusal is cached, and still says why
        compiler.compile(schema)


def test_cache_returns_the_compiled_grammar(golden_tokenizer):
    compiler = GrammarCompiler(golden_tokenizer, golden_tokenizer.vocab_size)
    assert compiler.compile(RECORD_SCHEMA) is compiler.compile(json.loads(json.dumps(RECORD_SCHEMA)))
    reordered = {"required": RECORD_SCHEMA["required"], **RECORD_SCHEMA}  # another key order: another grammar
    assert compiler.compile(reordered) is not compiler.compile(RECORD_SCHEMA)


def test_size_limit(golden_tokenizer):
    compiler = GrammarCompiler(golden_tokenizer, golden_tokenizer.vocab_size, GrammarLimits(max_schema_bytes=200))
    with pytest.raises(GrammarError, match="larger than 200 bytes"):
        compiler.compile(RECORD_SCHEMA)


async def test_compile_time_limit(golden_tokenizer):
    props = {f"field_{i}": {"type": "string", "pattern": "^[a-z]{3,9}@[a-z]+\\.(com|org|net)$"} for i in range(600)}
    slow = {"type": "object", "properties": props, "required": list(props)}
    compiler = GrammarCompiler(golden_tokenizer, golden_tokenizer.vocab_size,
                               GrammarLimits(max_schema_bytes=2**20, compile_timeout_s=0.001))
    try:
        with pytest.raises(GrammarError, match="longer than 0.001 s"):
            await compiler.compile_async(slow)
        quick = GrammarCompiler(golden_tokenizer, golden_tokenizer.vocab_size)
        assert (await quick.compile_async(RECORD_SCHEMA)).key == json.dumps(RECORD_SCHEMA, separators=(",", ":"))
        quick.close()
    finally:
        compiler.close()
        await asyncio.sleep(0)
