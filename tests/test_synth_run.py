"""`synth safety` against a scripted OpenAI-compatible server: what is written, retried, paused, stopped."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter

import pytest
from synth_server import ScriptedEndpoint, first_message_for

from nanochat_gateway.cli import main
from nanochat_gateway.synth.catalog import BORDERLINE
from nanochat_gateway.synth.check import run_check
from nanochat_gateway.synth.length import TokenizerUnavailable
from nanochat_gateway.synth.plan import plan_conversation
from nanochat_gateway.synth.progress import ProgressDisplay, RunStats, progress_line
from nanochat_gateway.synth.run import SynthOptions, run_safety
from nanochat_gateway.synth.store import read_sidecar, sidecar_path


def _offline_cl100k():
    raise TokenizerUnavailable("tiktoken cl100k_base is not available (offline in this test)")


async def _serve(aiohttp_server, endpoint: ScriptedEndpoint) -> str:
    server = await aiohttp_server(endpoint.app)
    return str(server.make_url("/v1"))


async def _run(url: str, tmp_path, **kw):
    defaults = {"model": "scripted", "out": tmp_path / "safety.jsonl", "count": 3, "concurrency": 1,
                "timeout_s": 5, "max_retries": 4}
    options = SynthOptions(base_url=url, **{**defaults, **kw})
    return await run_safety(options, progress=io.StringIO(), tty=False, cl100k=_offline_cl100k)


def _first_messages(path) -> list[str]:
    return [json.loads(line)[0]["content"] for line in path.read_text().splitlines()]


def _script_by_index(seed: int) -> list[str]:
    """Actions in request order (concurrency 1): one group per index, a wrong answer to one harmful
    and one borderline request placed where the plan of ``seed`` has them."""
    groups = [["fenced"], ["garbage"], ["array"], ["429:0.2", "object"], ["500", "truncated"], ["drop", "duplicate"],
              ["near_duplicate"], ["refusal"], ["fenced"], ["long"], ["array"]]
    plans = [plan_conversation(seed, i) for i in range(60)]
    harmful = next(i for i in range(2, 60) if plans[i].category in ("violence_weapons", "illegal_activities"))
    borderline = next(i for i in range(2, 60) if plans[i].category == BORDERLINE)
    for index in sorted((harmful, borderline)):
        groups.insert(index, ["bad"])
    return [action for group in groups for action in group]


async def test_output_holds_exactly_the_good_conversations(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(accept_schema=False, default="garbage", script=_script_by_index(seed=0))
    url = await _serve(aiohttp_server, endpoint)
    out = tmp_path / "safety.jsonl"
    summary = await _run(url, tmp_path, count=5, seed=0)

    assert summary.complete and summary.fatal is None
    assert len(endpoint.good_first_messages) == 6  # five good ones, and one that renders past 2048 tokens
    assert _first_messages(out) == endpoint.good_first_messages[:4] + endpoint.good_first_messages[5:]
    assert run_check(out) == 0
    stats = summary.stats
    assert stats.written == stats.accepted == 5 and stats.rejected == 8 and stats.failed == 0
    assert stats.reasons == {"unparseable": 1, "truncated": 1, "complied": 1, "no_refusal": 1,
                             "refused_borderline": 1, "duplicate": 1, "near_duplicate": 1, "generator_refused": 1,
                             "too_long": 1}
    assert stats.client.retries == {"429": 1, "500": 1, "connection": 1}
    # The endpoint refused json_schema once; no later request carried it.
    with_schema = [a for a in endpoint.arrivals if "response_format" in a.body]
    assert len(with_schema) == 1 and endpoint.arrivals[0] is with_schema[0]
    assert sum("refused response_format" in n for n in summary.notes) == 1
    assert any("bytes / 3" in n for n in summary.notes)
    records = read_sidecar(sidecar_path(out)).records
    assert sorted(records) == list(range(13))
    assert sum(r["status"] == "accepted" for r in records.values()) == 5
    text = "\n".join(summary.lines())
    assert "nearly repeats" in text and "e.g. user:" in text and "INCOMPLETE" not in text


async def test_structured_outputs_are_used_when_the_endpoint_accepts_them(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(default="object")
    url = await _serve(aiohttp_server, endpoint)
    summary = await _run(url, tmp_path, count=2, concurrency=2)
    assert summary.complete and not any("response_format" in n for n in summary.notes)
    formats = [a.body["response_format"] for a in endpoint.arrivals]
    assert all(f["type"] == "json_schema" and f["json_schema"]["schema"]["required"] == ["messages"] for f in formats)


async def test_a_429_pauses_every_worker_for_retry_after(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(script=["429:1"], default="object", delay_s=0.3)
    endpoint_fast_429 = endpoint  # the 429 answers at once; the delay applies to conversations only
    url = await _serve(aiohttp_server, endpoint)
    summary = await _run(url, tmp_path, count=5, concurrency=3)

    assert summary.complete and summary.stats.client.retries == {"429": 1}
    (paused_at,) = endpoint_fast_429.sent_429_at
    later = [a.time - paused_at for a in endpoint.arrivals if a.time > paused_at + 0.1]
    assert later, "requests continued after the pause"
    # Retry-After: 1 second, for every worker: nothing arrived between the 429 and one second later.
    assert min(later) >= 0.95, later
    assert summary.stats.client.paused_s == pytest.approx(1.0, abs=0.1)


async def test_retry_after_ms_wins_over_retry_after(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(script=["429ms:400"], default="object")
    url = await _serve(aiohttp_server, endpoint)
    summary = await _run(url, tmp_path, count=1)
    assert summary.complete
    gap = endpoint.arrivals[1].time - endpoint.sent_429_at[0]
    assert 0.38 <= gap < 5  # 400 ms, not the 30 s of Retry-After


async def test_retries_give_up_and_record_a_failure_that_resume_retries(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(script=["503", "503", "object"], default="object")
    url = await _serve(aiohttp_server, endpoint)
    summary = await _run(url, tmp_path, count=1, max_retries=1, max_attempts=1)
    assert not summary.complete and summary.stats.reasons == {"request_failed": 1}
    assert "INCOMPLETE" in "\n".join(summary.lines())
    summary = await _run(url, tmp_path, count=1)
    assert summary.complete
    records = read_sidecar(sidecar_path(tmp_path / "safety.jsonl")).records
    assert records[0]["status"] == "accepted"  # index 0 asked again, not skipped


async def test_401_stops_the_run_at_once_with_a_clear_message(aiohttp_server, tmp_path, monkeypatch, capsys,
                                                               tiny_model_dir):
    endpoint = ScriptedEndpoint(script=["401"], default="object")
    url = await _serve(aiohttp_server, endpoint)
    monkeypatch.setenv("MY_PROVIDER_KEY", "sk-wrong")
    argv = ["synth", "safety", "--base-url", url, "--model", "m", "--count", "4", "--concurrency", "1",
            "--out", str(tmp_path / "s.jsonl"), "--api-key-env", "MY_PROVIDER_KEY", "--tokenizer", str(tiny_model_dir)]
    code = await asyncio.to_thread(main, argv)
    printed = capsys.readouterr().out
    assert code == 1
    assert len(endpoint.arrivals) == 1
    assert endpoint.arrivals[0].body["model"] == "m"
    assert "answered 401 (scripted 401)" in printed and "$MY_PROVIDER_KEY" in printed
    assert "sk-wrong" not in printed


async def test_the_key_is_sent_as_a_bearer_token_from_the_environment(aiohttp_server, tmp_path, monkeypatch,
                                                                       tiny_model_dir):
    seen: list[str] = []
    endpoint = ScriptedEndpoint(default="object")
    original = endpoint.handle

    async def handle(request):
        seen.append(request.headers.get("Authorization", ""))
        return await original(request)

    endpoint.handle = handle
    url = await _serve(aiohttp_server, endpoint)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    code = await asyncio.to_thread(main, ["synth", "safety", "--base-url", url, "--model", "m", "--count", "1",
                                          "--out", str(tmp_path / "s.jsonl"), "--tokenizer", str(tiny_model_dir)])
    assert code == 0 and seen == ["Bearer sk-test-123"]


async def test_404_names_the_base_url(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(script=["404"])
    url = await _serve(aiohttp_server, endpoint)
    summary = await _run(url, tmp_path)
    assert summary.fatal and "--base-url" in summary.fatal and "404" in summary.fatal


async def test_judge_grades_conversations(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(default="object", judge_script=["fail", "garbage", "pass", "pass"])
    url = await _serve(aiohttp_server, endpoint)
    summary = await _run(url, tmp_path, count=2, judge_model="grader")
    assert summary.complete
    assert summary.stats.reasons == {"judge_rejected": 1, "judge_unparseable": 1}
    judged = [a for a in endpoint.arrivals if a.action.startswith("judge:")]
    assert len(judged) == 4 and all(a.body["model"] == "grader" for a in judged)
    # Only conversations the judge passed were written.
    assert _first_messages(tmp_path / "safety.jsonl") == endpoint.good_first_messages[2:]


async def test_exact_token_counts_with_a_checkpoint_tokenizer(aiohttp_server, tmp_path, tiny_model_dir):
    endpoint = ScriptedEndpoint(script=["long", "object"])
    url = await _serve(aiohttp_server, endpoint)
    summary = await _run(url, tmp_path, count=1, tokenizer=tiny_model_dir)
    assert summary.complete and summary.stats.reasons == {"too_long": 1}
    assert f"the tokenizer of {tiny_model_dir}, limit 2048" in summary.length_counter
    assert not any("bytes / 3" in n for n in summary.notes)


async def test_same_seed_same_questions(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(default="object")
    url = await _serve(aiohttp_server, endpoint)
    await _run(url, tmp_path, count=3, seed=5, out=tmp_path / "a.jsonl")
    await _run(url, tmp_path, count=3, seed=5, out=tmp_path / "b.jsonl", concurrency=3)
    await _run(url, tmp_path, count=3, seed=6, out=tmp_path / "c.jsonl")
    a, b, c = (_first_messages(tmp_path / f"{n}.jsonl") for n in "abc")
    assert sorted(a) == sorted(b) and not set(a) & set(c)
    prompts = [x.body["messages"][-1]["content"] for x in endpoint.arrivals[:3]]
    assert [first_message_for(p) for p in prompts] == a


async def test_a_400_that_names_nothing_is_probed_without_response_format(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(accept_schema=False, schema_error="Invalid request", default="fenced")
    url = await _serve(aiohttp_server, endpoint)
    summary = await _run(url, tmp_path, count=3)
    assert summary.complete
    assert [a.action for a in endpoint.arrivals] == ["schema400", "fenced", "fenced", "fenced"]
    (note,) = summary.notes[1:]
    assert "Invalid request" in note and "a request without it succeeded" in note


async def test_endpoints_that_refuse_max_tokens_or_temperature_get_what_they_accept(aiohttp_server, tmp_path):
    endpoint = ScriptedEndpoint(refuse_fields=("max_tokens", "temperature"), default="object")
    url = await _serve(aiohttp_server, endpoint)
    summary = await _run(url, tmp_path, count=2)
    assert summary.complete
    served = [a.body for a in endpoint.arrivals if a.action == "object"]
    assert all("max_tokens" not in b and b["max_completion_tokens"] == 2048 and "temperature" not in b
               for b in served)
    assert len([a for a in endpoint.arrivals if a.action.startswith("refused:")]) == 2  # decided once each
    assert any("max_completion_tokens" in n for n in summary.notes)
    assert any("temperature" in n for n in summary.notes)


def test_progress_line_shows_written_rejections_retries_and_tokens():
    stats = RunStats(target=10, written=4, rejected=3, reasons=Counter({"unparseable": 2, "duplicate": 1}))
    stats.client.retries.update({"429": 2})
    stats.client.prompt_tokens, stats.client.completion_tokens = 12000, 3400
    line = progress_line(stats, paused_for=3.2)
    assert line == ("4/10 written [########............]  rejected 3 (unparseable 2, duplicate 1)  "
                    "retries 2 (429 2)  tokens 15.4k  paused 3s (429)")
    tty = io.StringIO()
    display = ProgressDisplay(tty, tty=True)
    display.show("a")
    display.finish("b")
    assert tty.getvalue() == "\ra\x1b[K\rb\x1b[K\n"


async def test_options_that_cannot_work_exit_2_before_any_request(aiohttp_server, tmp_path, capsys, tiny_model_dir):
    endpoint = ScriptedEndpoint(default="object")
    url = await _serve(aiohttp_server, endpoint)
    base = ["synth", "safety", "--base-url", url, "--model", "m", "--count", "1", "--out", str(tmp_path / "s.jsonl")]
    assert await asyncio.to_thread(main, [*base, "--tokenizer", str(tmp_path / "nowhere")]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [*base, "--tokenizer", str(tiny_model_dir), "--seed", "1"]) == 0
    requests = len(endpoint.arrivals)
    assert await asyncio.to_thread(main, [*base, "--tokenizer", str(tiny_model_dir), "--seed", "2"]) == 2
    assert "started with seed 1" in capsys.readouterr().err
    assert len(endpoint.arrivals) == requests
