"""Structured output inside the executor: masked rows next to free ones, n > 1, seeds,
logprobs, max_tokens and the calculator, with the random-weights tiny demo model."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from test_engine import _run_scripted, collect, start_executor

from nanochat_gateway.bench.structured import RECORD_SCHEMA
from nanochat_gateway.engine.grammar import JSON_OBJECT_SCHEMA, GrammarCompiler
from nanochat_gateway.engine.request import GenerationRequest, SamplingParams
from nanochat_gateway.engine.token_mask import RowGrammar
from nanochat_gateway.model.chat_template import render_for_completion


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from nanochat_gateway import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def compiler(tiny):
    compiler = GrammarCompiler(tiny.tokenizer, tiny.config.vocab_size)
    yield compiler
    compiler.close()


def chat_request(tiny, max_tokens=300, grammar=None, n=1, **sampling) -> GenerationRequest:
    tok = tiny.tokenizer
    prompt = render_for_completion(tok, [{"role": "user", "content": "Describe a pet as JSON."}])
    sampling.setdefault("temperature", 1.0)
    return GenerationRequest(prompt, max_tokens, SamplingParams(**sampling), grammar=grammar, n=n,
                             stop_token_ids=frozenset({tok.assistant_end, tok.bos_id}))


def texts(tiny, tokens: list[list[int]]) -> list[str]:
    ends = {tiny.tokenizer.assistant_end, tiny.tokenizer.bos_id}
    return [tiny.tokenizer.decode([t for t in choice if t not in ends]) for choice in tokens]


async def test_n_choices_each_follow_the_schema(tiny, compiler):
    executor = await start_executor(tiny)
    try:
        request = chat_request(tiny, grammar=compiler.compile(RECORD_SCHEMA), n=3, seed=3)
        tokens, reasons, _ = await collect(executor.submit(request))
        assert reasons == ["stop"] * 3
        replies = [json.loads(text) for text in texts(tiny, tokens)]
        for reply in replies:
            jsonschema.validate(reply, RECORD_SCHEMA)
        assert len({json.dumps(r) for r in replies}) == 3  # each choice has its own parser and generator
    finally:
        executor.stop()


async def test_constrained_and_free_rows_share_steps(tiny, compiler):
    executor = await start_executor(tiny)
    sizes: list[int] = []
    executor.hooks.listeners.append(lambda info: sizes.append(info.batch_size))
    try:
        grammar = compiler.compile(RECORD_SCHEMA)
        free_alone = (await collect(executor.submit(chat_request(tiny, 40, seed=11))))[0][0]
        constrained_alone = (await collect(executor.submit(chat_request(tiny, grammar=grammar, seed=12))))[0][0]
        sizes.clear()
        streams = [executor.submit(chat_request(tiny, 40, seed=11)),
                   executor.submit(chat_request(tiny, grammar=grammar, seed=12)),
                   *(executor.submit(chat_request(tiny, 40, seed=20 + i)) for i in range(2)),
                   *(executor.submit(chat_request(tiny, grammar=grammar, seed=30 + i)) for i in range(2))]
        results = await asyncio.gather(*(collect(s) for s in streams))
        assert max(sizes) == 6  # the four free and two more constrained rows decoded in one step
        # Seeded rows pick the same tokens alone and in a mixed batch, masked or not.
        assert results[0][0][0] == free_alone
        assert results[1][0][0] == constrained_alone
        for tokens, reasons, _ in (results[1], *results[4:]):
            assert reasons == ["stop"]
            jsonschema.validate(json.loads(texts(tiny, tokens)[0]), RECORD_SCHEMA)
        assert all(r[1] == ["length"] for r in (results[0], *results[2:4]))
        with pytest.raises(json.JSONDecodeError):
            json.loads(texts(tiny, results[0][0])[0])  # the free rows stay free
    finally:
        executor.stop()


async def test_max_tokens_before_the_end_gives_length(tiny, compiler):
    executor = await start_executor(tiny)
    try:
        request = chat_request(tiny, 6, grammar=compiler.compile(RECORD_SCHEMA), seed=1)
        tokens, reasons, _ = await collect(executor.submit(request))
        assert reasons == ["length"] and len(tokens[0]) == 6
        assert texts(tiny, tokens)[0].startswith("{")
    finally:
        executor.stop()


async def test_logprobs_describe_the_masked_distribution(tiny, compiler):
    executor = await start_executor(tiny)
    try:
        request = chat_request(tiny, 12, grammar=compiler.compile(RECORD_SCHEMA), seed=2,
                               logprobs=True, top_logprobs=20)
        tokens, _, logprobs = await collect(executor.submit(request))
        first = logprobs[0][0]
        opening = [t for t, _ in first.top]
        # only tokens that can open the object are candidates for the first token
        assert all(tiny.tokenizer.token_bytes(t).lstrip().startswith(b"{") for t in opening)
        assert [lp.token_id for lp in logprobs[0]] == tokens[0]
        assert all(v > float("-inf") for lp in logprobs[0] for _, v in lp.top)
    finally:
        executor.stop()


async def test_logit_bias_cannot_push_a_forbidden_token(tiny, compiler):
    executor = await start_executor(tiny)
    try:
        tok = tiny.tokenizer
        x, bracket = tok.encode("x")[0], tok.encode("]")[0]
        grammar = compiler.compile({"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]})
        request = chat_request(tiny, 40, grammar=grammar, seed=4, logit_bias={x: 100.0, bracket: 100.0})
        tokens = (await collect(executor.submit(request)))[0][0]
        assert tokens.count(x) + tokens.count(bracket) > 20  # the bias wins wherever the grammar allows it (inside strings)
        replay = RowGrammar(grammar)
        assert all(replay.accept(t) for t in tokens)  # and nowhere else
    finally:
        executor.stop()


async def test_a_constrained_row_never_calls_the_calculator(tiny, compiler):
    """A model that always prefers <|python_start|> gets no forced tool output under a grammar."""
    tok = tiny.tokenizer
    executor = await start_executor(tiny)
    try:
        request = chat_request(tiny, 10, grammar=compiler.compile(JSON_OBJECT_SCHEMA), temperature=0.0)
        tokens, _, _ = await _run_scripted(executor.submit(request), [tok.python_start, *tok.encode("1+2")])
        assert tok.python_start not in tokens and tok.output_start not in tokens
    finally:
        executor.stop()
