"""/openapi.json describes the server well enough for schemathesis to fuzz it.

schemathesis is a dev tool (installed with the dev environment, not a runtime dependency); the
fuzz test is skipped without it. The fuzz is bounded (a few examples per operation, short
generations) so it stays within ~20 s.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from nanochat_gateway.api import ui
from nanochat_gateway.api.openapi import build_openapi

FUZZ_BUDGET_S = 20.0
MAX_EXAMPLES = 12  # per operation and mode


@pytest.fixture
async def gateway(start_gateway):
    # Short generations, so each fuzzed request costs milliseconds.
    return await start_gateway(**{"engine.max_batch_size": 4, "engine.max_tokens": 4,
                                  "limits.max_tokens_limit": 8})


async def fetch_openapi(gateway) -> dict:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/openapi.json") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
        return await resp.json()


async def test_openapi_document_is_3_1_and_matches_the_routes(gateway):
    doc = await fetch_openapi(gateway)
    assert doc["openapi"] == "3.1.0"
    served = {r.resource.canonical for r in gateway.app.router.routes() if r.resource is not None}
    page = {ui.PAGE_PATH, ui.FILE_ROUTE}  # the chat page and its files are for browsers, not API clients
    assert set(doc["paths"]) == served - {"/openapi.json"} - page
    schemas = doc["components"]["schemas"]
    # The model field is pinned to the served model, so generated requests name it.
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == [gateway.model_id]
    for name in ("ChatCompletionRequest", "CompletionRequest", "ChatCompletion", "ChatCompletionChunk",
                 "Completion", "ErrorResponse", "Model", "ModelList"):
        assert name in schemas
    assert build_openapi()["components"]["schemas"].keys() == schemas.keys()


async def test_schemathesis_fuzz_finds_no_server_errors_or_schema_violations(gateway):
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev tool for this check")
    doc = await fetch_openapi(gateway)
    failures = await asyncio.to_thread(_fuzz, schemathesis, doc, gateway.url)
    assert not failures, "\n\n".join(failures[:5])


def _fuzz(schemathesis, doc: dict, base_url: str) -> list[str]:
    """Run positive and negative examples for every operation (blocking: runs in a thread)."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_dict(doc)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              negative_data_rejection]
    failures: list[str] = []
    deadline = time.monotonic() + FUZZ_BUDGET_S
    operations = [result.ok() for result in schema.get_all_operations()]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for operation in operations:
            if time.monotonic() > deadline:
                return failures
            _fuzz_operation(operation, mode, base_url, checks, failures)
    return failures


def _fuzz_operation(operation, mode, base_url: str, checks: list, failures: list[str]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    # explicit: the documented request examples (streamed ones among them), then generated cases.
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=base_url, timeout=10)
        try:
            case.validate_response(response, checks=checks)
        except (Exception, BaseExceptionGroup) as exc:  # collect, so one run reports every kind of failure
            failures.append(f"{operation.label} [{mode.value}]: {exc}")

    try:
        run()
    except Unsatisfiable:
        assert mode.value == "negative", operation.label  # nothing to break in a GET without parameters


async def test_the_document_promises_only_what_the_server_accepts(gateway):
    schemas = (await fetch_openapi(gateway))["components"]["schemas"]
    chat, text = schemas["ChatCompletionRequest"]["properties"], schemas["CompletionRequest"]["properties"]
    assert schemas["ChatMessage"]["properties"]["role"]["enum"] == ["system", "developer", "user", "assistant", "tool"]
    assert chat["n"]["maximum"] == text["n"]["maximum"] == 4  # [engine] max_batch_size of this server
    assert [b.get("maximum") for b in chat["max_tokens"]["anyOf"]] == [8, None]  # [limits] max_tokens_limit
    assert [b.get("maximum") for b in text["max_tokens"]["anyOf"]] == [8, None]
    batches = [b for b in text["prompt"]["anyOf"] if b["type"] == "array"]
    # lists of prompts are capped by [limits] max_prompts; one prompt's token ids are not
    assert [b.get("maxItems") for b in batches] == [64, None, 64]


async def test_plugin_routes_are_described_where_they_are_served(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["metrics"], "plugins.metrics.path": "/prom",
                                     "engine.max_batch_size": 2})
    doc = await fetch_openapi(gateway)
    assert "/prom" in doc["paths"] and "/metrics" not in doc["paths"]
    assert doc["paths"]["/prom"]["get"]["responses"]["200"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/prom") as resp:
        assert resp.status == 200


async def test_tokenize_body_schema_says_exactly_one_of_prompt_and_messages(gateway):
    """What the document allows for POST /tokenize is what the server accepts."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="installed with schemathesis (a dev tool)")
    doc = await fetch_openapi(gateway)
    validator = jsonschema_rs.validator_for({"$ref": "#/components/schemas/TokenizeRequest", **doc})
    message = [{"role": "user", "content": "hi"}]
    bodies = [{"prompt": "x"}, {"messages": message}, {"prompt": "x", "messages": None},
              {"prompt": None, "messages": message}, {"prompt": "x", "messages": message},
              {"prompt": None, "messages": None}, {}]
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(f"{gateway.url}/tokenize", json=body) as resp:
                assert validator.is_valid(body) == (resp.status == 200), (body, resp.status)
