"""docs/API.md is true: its examples run against a live server, and it covers every route, field and error code.

Each runnable example is a fenced block with a title (```bash title="chat-basic"). The test
serves the tiny demo model under the id the docs use, replaces http://localhost:8000 with the
test server's address, runs every example (curl through bash, Python through the interpreter
running the tests) and checks its output with the function registered for its title.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_api_support import parse_sse

from nanochat_gateway.api import errors
from nanochat_gateway.api.schemas import ChatCompletionRequest, CompletionRequest

DOC = Path(__file__).parent.parent / "docs" / "API.md"
API_DIR = Path(__file__).parent.parent / "nanochat_gateway" / "api"
DOC_URL = "http://localhost:8000"
DOC_MODEL = "sdobson/nanochat"
EXAMPLE_TIMEOUT_S = 60
BLOCK_RE = re.compile(r'^```(bash|python) title="([^"]+)"\n(.*?)^```$', re.S | re.M)
FENCE_RE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```$", re.S | re.M)


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def examples() -> dict[str, tuple[str, str]]:
    """title -> (language, code) of every runnable example."""
    found: dict[str, tuple[str, str]] = {}
    for language, title, code in BLOCK_RE.findall(doc_text()):
        assert title not in found, f"two examples are titled {title!r}"
        found[title] = (language, code)
    return found


def _json_blocks(text: str) -> list[tuple[int, dict]]:
    """(position, parsed JSON) of every ```json block."""
    return [(m.start(), json.loads(m.group(2))) for m in FENCE_RE.finditer(text) if m.group(1) == "json"]


def documented_json_after(title: str) -> list[dict]:
    """The ```json blocks between the example `title` and the next runnable example (its shown output)."""
    text = doc_text()
    example = next(m for m in BLOCK_RE.finditer(text) if m.group(2) == title)
    following = BLOCK_RE.search(text, example.end())
    end = following.start() if following else len(text)
    return [block for pos, block in _json_blocks(text) if example.end() <= pos < end]


def documented_json_before(title: str) -> dict:
    """The last ```json block before the example `title`."""
    text = doc_text()
    example = next(m for m in BLOCK_RE.finditer(text) if m.group(2) == title)
    return [block for pos, block in _json_blocks(text) if pos < example.start()][-1]


# ------------------------------------------------------------------ checks, one per example title
def _check_chat_basic(out: str) -> None:
    chat = json.loads(out)
    assert chat["object"] == "chat.completion" and chat["model"] == DOC_MODEL
    assert chat["usage"]["completion_tokens"] <= 20 and chat["choices"][0]["message"]["role"] == "assistant"


def _check_sdk_chat(out: str) -> None:
    finish, total = out.splitlines()[-1].split()
    assert finish in ("stop", "length") and int(total) > 0


def _check_completions_basic(out: str) -> None:
    text = json.loads(out)
    assert text["object"] == "text_completion" and text["usage"]["completion_tokens"] <= 8


def _check_sdk_completions(out: str) -> None:
    lines = out.splitlines()
    assert lines[0].startswith("'Once upon a time")
    offsets = [line.split(" ", 2) for line in lines[1:]]
    assert offsets[0][0] == "0" and offsets[0][2] != "None"  # the echoed prompt is scored too
    assert offsets[-1][2] != "None" and len(offsets) > 5


def _check_chat_stream(out: str) -> None:
    sse = parse_sse(out)
    assert sse.done and not sse.errors
    assert sse.chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sse.chunks[-1]["choices"] == [] and sse.chunks[-1]["usage"]["completion_tokens"] <= 2


def _check_sdk_stream(out: str) -> None:
    label, prompt, completion, total = out.splitlines()[-1].split()
    assert label == "usage:" and int(prompt) + int(completion) == int(total) and int(completion) <= 12


def _check_sdk_async(out: str) -> None:
    lines = out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines[:3]] == ["0", "1", "2"]
    assert lines[3] == "same with the same seed: True"


def _check_models(out: str) -> None:
    models = json.loads(out)
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [DOC_MODEL]
    shown = documented_json_after("models")[0]["data"][0]
    assert set(shown) <= set(models["data"][0]) | {"description"}


def _check_model_not_found(out: str) -> None:
    assert json.loads(out) == documented_json_after("model-not-found")[0]


def _check_ready(out: str) -> None:
    assert json.loads(out) == {"status": "ready", "reason": "ready", "model": DOC_MODEL}


def _check_stats(out: str) -> None:
    stats = json.loads(out)
    keys = {"name", "device", "state", "running", "waiting", "slots_used", "slots_total", "steps",
            "tokens_prefilled", "tokens_decoded"}
    assert keys <= set(stats["executors"][0]) and stats["model_id"] == DOC_MODEL


def _check_error_bad_request(out: str) -> None:
    assert json.loads(out) == documented_json_before("error-bad-request")


def _check_sdk_parse(out: str) -> None:
    assert out.splitlines()[-1] == "stop City ['country', 'founded', 'kind', 'name']"


def _check_sdk_tools(out: str) -> None:
    assert out.splitlines() == ["tool_calls get_weather ['city']", "True"]


def _check_sdk_errors(out: str) -> None:
    assert out.splitlines() == ["400 invalid_conversation messages.0.role", "404 model_not_found model"]


def _check_sdk_continue(out: str) -> None:
    assert out.startswith("'") or out.startswith('"')


def _check_sdk_batch(out: str) -> None:
    lines = out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines[:4]] == ["0", "1", "2", "3"]
    assert lines[0] == lines[1].replace("1", "0", 1) and lines[2] == lines[3].replace("3", "2", 1)  # greedy
    prompt, completion = lines[4].split()
    assert int(completion) <= 4 * 6


def _check_sdk_score(out: str) -> None:
    lines = out.splitlines()
    assert lines[0].startswith("'The'") and float(lines[0].split()[-1]) <= 0
    assert lines[-1].startswith("log-likelihood: -")


def _check_tokenize(out: str) -> None:
    body = json.loads(out)
    assert body["count"] == len(body["tokens"]) and body["token_strs"] is None and body["max_model_len"] > 0


def _check_sdk_tokenize(out: str) -> None:
    first, prompt = out.splitlines()
    assert int(first.split()[1]) > 1 and prompt == "<|bos|>Hello world"


def _check_tokenizer_info(out: str) -> None:
    info = json.loads(out)
    assert (info["bos_token"], info["eos_token"]) == ("<|bos|>", "<|assistant_end|>") and info["chat_template"]


CHECKS: dict[str, Callable[[str], None]] = {
    "tokenize": _check_tokenize,
    "sdk-tokenize": _check_sdk_tokenize,
    "tokenizer-info": _check_tokenizer_info,
    "sdk-continue": _check_sdk_continue,
    "sdk-batch": _check_sdk_batch,
    "sdk-score": _check_sdk_score,
    "chat-basic": _check_chat_basic,
    "sdk-chat": _check_sdk_chat,
    "completions-basic": _check_completions_basic,
    "sdk-completions": _check_sdk_completions,
    "chat-stream": _check_chat_stream,
    "sdk-stream": _check_sdk_stream,
    "sdk-async": _check_sdk_async,
    "models": _check_models,
    "model-not-found": _check_model_not_found,
    "ready": _check_ready,
    "stats": _check_stats,
    "error-bad-request": _check_error_bad_request,
    "sdk-errors": _check_sdk_errors,
    "sdk-parse": _check_sdk_parse,
    "sdk-tools": _check_sdk_tools,
}


async def run_example(language: str, code: str, url: str) -> tuple[int, str, str]:
    code = code.replace(DOC_URL, url)
    argv = ["bash", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), EXAMPLE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        raise
    return proc.returncode, out.decode(), err.decode()


def test_every_example_has_a_check():
    assert set(examples()) == set(CHECKS)


async def test_examples_run_against_a_live_server(start_gateway):
    gateway = await start_gateway(**{"model.id": DOC_MODEL, "engine.max_batch_size": 4})
    found = examples()
    results = await asyncio.gather(*(run_example(lang, code, gateway.url) for lang, code in found.values()))
    failures = []
    for title, (code, out, err) in zip(found, results, strict=True):
        try:
            assert code == 0, f"exit status {code}"
            CHECKS[title](out)
        except (AssertionError, ValueError, IndexError) as exc:
            failures.append(f"{title}: {exc!r}\n--- stdout\n{out}\n--- stderr\n{err}")
    assert not failures, "\n\n".join(failures)


# ------------------------------------------------------------------ coverage of the reference
def test_every_route_is_documented(tiny_model_dir):
    from nanochat_gateway.app import create_app
    from nanochat_gateway.config import load_settings

    app = create_app(load_settings(None, env={}, overrides={"model.source": str(tiny_model_dir),
                                                            "plugins.enabled": []}))
    text = doc_text()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        heading = f"{route.method} {route.resource.canonical}"
        assert f"`{heading}`" in text, f"{heading} is not in docs/API.md"


@pytest.mark.parametrize("model", [ChatCompletionRequest, CompletionRequest])
def test_every_request_field_is_documented(model):
    text = doc_text()
    missing = [name for name in model.model_fields if f"`{name}`" not in text]
    assert not missing, f"{model.__name__} fields missing from docs/API.md: {missing}"


def test_every_error_code_is_documented():
    source = "\n".join(p.read_text(encoding="utf-8") for p in API_DIR.glob("*.py"))
    codes = set(re.findall(r'code="([a-z_]+)"', source))
    codes |= set(re.findall(r'PydanticCustomError\(\s*"([a-z_]+)"', source))
    # Codes errors.py builds without a keyword: from pydantic error types and its constructors.
    codes |= {"missing_required_parameter", "invalid_type", "unsupported_parameter", "method_not_allowed",
              "payload_too_large", "overloaded", "timeout"}
    codes -= {"invalid_api_key", "rate_limit_exceeded"}  # only plugins use these; plugins.md documents them
    text = doc_text()
    missing = sorted(code for code in codes if f"`{code}`" not in text)
    assert not missing, f"error codes missing from docs/API.md: {missing}"
    types = set(re.findall(r'"([a-z_]+_error)"', source)) - set(errors.__all__)
    types -= {"rate_limit_error"}  # only the rate_limit plugin answers 429
    missing = sorted(t for t in types if f"`{t}`" not in text)
    assert not missing, f"error types missing from docs/API.md: {missing}"
