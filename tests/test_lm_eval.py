"""lm-evaluation-harness's local-completions model against a real gateway: a multiple-choice
(loglikelihood) task and a generate_until task, both defined from local files, batched, with
the remote tokenizer (/tokenize, /detokenize, /tokenizer_info) instead of a local copy.

lm-eval is an optional test dependency (the `eval` extra): the test is skipped where it is not
installed, except in CI (CI=true), where .ci/run installs it and a missing lm-eval is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from nanochat_gateway.plugins import GenerationContext, Plugin

SEEN: list[tuple[str, object]] = []


class Recorder(Plugin):
    """Notes the paths lm-eval calls and the shape of its completion requests."""

    name = "lm_eval_recorder"

    async def middleware(self, request, handler):
        SEEN.append(("path", request.path))
        return await handler(request)

    async def on_request(self, ctx: GenerationContext) -> None:
        body = ctx.body
        SEEN.append(("completion", (len(ctx.prompts), body.echo, body.logprobs, body.max_tokens)))


MC_DOCS = [
    {"question": "The sky on a clear day is", "choices": [" blue", " green", " loud"], "answer": 0},
    {"question": "Two plus two equals", "choices": [" four", " seven"], "answer": 0},
    {"question": "Ice is made of frozen", "choices": [" water", " sand", " light", " iron"], "answer": 0},
    {"question": "A cat says", "choices": [" meow", " moo", " quack"], "answer": 0},
    {"question": "Paris is the capital of", "choices": [" France", " Peru"], "answer": 0},
]
GEN_DOCS = [
    {"question": "Q: What color is grass?\nA:", "answer": " green"},
    {"question": "Q: How many legs has a dog?\nA:", "answer": " four"},
    {"question": "Q: What is frozen water called?\nA:", "answer": " ice"},
]


def lm_eval_or_skip():
    try:
        import lm_eval
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("lm-eval must be installed in CI (.ci/run installs the 'eval' extra)")
        pytest.skip("lm-eval is not installed: pip install -c constraints.txt -e '.[eval]'")
    return lm_eval


def write_tasks(directory: Path) -> None:
    """Two tasks whose documents come from local JSON lines files (no dataset download)."""
    for name, docs in (("mc", MC_DOCS), ("gen", GEN_DOCS)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    data = lambda name: {"data_files": {"test": str(directory / f"{name}.jsonl")}}  # noqa: E731
    mc = {"task": "nanochat_tiny_mc", "dataset_path": "json", "dataset_kwargs": data("mc"), "test_split": "test",
          "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
          "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    gen = {"task": "nanochat_tiny_gen", "dataset_path": "json", "dataset_kwargs": data("gen"), "test_split": "test",
           "output_type": "generate_until", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
           "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
           "metric_list": [{"metric": "exact_match"}]}
    # YAML is a superset of JSON, so the task files need no YAML writer.
    (directory / "nanochat_tiny_mc.yaml").write_text(json.dumps(mc))
    (directory / "nanochat_tiny_gen.yaml").write_text(json.dumps(gen))


def evaluate(lm_eval, task_dir: Path, base_url: str, model: str) -> dict:
    from lm_eval.tasks import TaskManager

    args = (f"model={model},base_url={base_url}/completions,tokenizer_backend=remote,"
            "batch_size=4,max_retries=1,max_length=256")
    return lm_eval.simple_evaluate(model="local-completions", model_args=args,
                                   tasks=["nanochat_tiny_mc", "nanochat_tiny_gen"],
                                   task_manager=TaskManager(include_path=str(task_dir)), log_samples=True)


async def test_local_completions_runs_a_loglikelihood_and_a_generation_task(start_gateway, tmp_path, monkeypatch):
    lm_eval = lm_eval_or_skip()
    SEEN.clear()
    gateway = await start_gateway(**{"plugins.enabled": ["stop_sequences", "test_lm_eval:Recorder"]})
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    write_tasks(tmp_path)
    results = await asyncio.to_thread(evaluate, lm_eval, tmp_path, gateway.base_url, gateway.model_id)

    mc, gen = results["results"]["nanochat_tiny_mc"], results["results"]["nanochat_tiny_gen"]
    assert 0.0 <= mc["acc,none"] <= 1.0 and 0.0 <= mc["acc_norm,none"] <= 1.0
    assert 0.0 <= gen["exact_match,none"] <= 1.0
    samples = results["samples"]["nanochat_tiny_mc"]
    assert len(samples) == len(MC_DOCS)
    for sample, doc in zip(sorted(samples, key=lambda s: s["doc_id"]), MC_DOCS, strict=True):
        scores = [resp[0] for resp in sample["filtered_resps"]]
        # every choice got a real log-likelihood: finite, negative, one per choice
        assert len(scores) == len(doc["choices"]) and all(float("-inf") < float(s) < 0 for s in scores)
    assert len(results["samples"]["nanochat_tiny_gen"]) == len(GEN_DOCS)

    paths = {value for kind, value in SEEN if kind == "path"}
    assert {"/tokenizer_info", "/tokenize", "/v1/completions"} <= paths  # the remote tokenizer was used
    shapes = [value for kind, value in SEEN if kind == "completion"]
    scoring = [s for s in shapes if s[1]]  # echo: loglikelihood requests
    assert scoring and all(s[2] == 1 for s in scoring) and max(s[0] for s in scoring) == 4  # batches of 4
    assert any(not s[1] for s in shapes)  # and generation requests
