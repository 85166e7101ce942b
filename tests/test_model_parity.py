"""Every golden generation: logits and greedy continuations equal nanochat's own."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import GENERATIONS, golden_expected, golden_model
from nanochat_gateway.engine.kv_cache import SlotKVCache
from nanochat_gateway.model.step import StepBatch

ATOL = 1e-4  # the golden README's recommended tolerance (30x float32 noise)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_detects_generation(generation):
    assert golden_model(generation).architecture == generation


@pytest.mark.parametrize("generation", GENERATIONS)
def test_teacher_forced_logits_match(generation):
    loaded, expected = golden_model(generation), golden_expected(generation)
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([expected["prompt"]]))[0]
    assert logits.shape == expected["logits"].shape
    assert (logits - expected["logits"]).abs().max().item() <= ATOL


@pytest.mark.parametrize("generation", GENERATIONS)
def test_greedy_continuation_matches(generation):
    loaded, expected = golden_model(generation), golden_expected(generation)
    ids = list(expected["prompt"][: expected["greedy_prefix_len"]])
    out = []
    with torch.inference_mode():
        for _ in range(expected["greedy_n"]):
            token = int(loaded.model(torch.tensor([ids]))[0, -1].argmax())
            ids.append(token)
            out.append(token)
    assert out == expected["greedy_naive"]


@pytest.mark.parametrize("generation", GENERATIONS)
def test_batched_step_path_matches_no_cache_logits(generation):
    """Chunked prefill into slot 3, then one token per step, while two other slots decode
    unrelated sequences at other positions: the row's logits still equal the reference."""
    loaded, expected = golden_model(generation), golden_expected(generation)
    model, prompt, ref = loaded.model, expected["prompt"], expected["logits"]
    cache = SlotKVCache(loaded.config, 6, 512, dtype=torch.float32, smear=loaded.spec.smear)
    rng = random.Random(7)
    other = {0: rng.choices(range(290), k=300), 5: rng.choices(range(290), k=300)}
    other_pos = {0: 37, 5: 120}
    worst = 0.0
    with torch.inference_mode():
        model.forward_step(StepBatch.build([], [(0, 0, other[0][:37]), (5, 0, other[5][:120])], [0, 1]), cache)
        pos = 0
        while pos < len(prompt):
            decode = [(s, other_pos[s], other[s][other_pos[s]]) for s in (0, 5)]
            if pos < 100:  # two 50-token chunks, mixed with the other rows' decode
                step = StepBatch.build(decode, [(3, pos, prompt[pos : pos + 50])], [2])
                got, pos_done = model.forward_step(step, cache)[0], pos + 49
                pos += 50
            else:
                decode.insert(rng.randrange(3), (3, pos, prompt[pos]))
                row = [d[0] for d in decode].index(3)
                got, pos_done = model.forward_step(StepBatch.build(decode, [], [row]), cache)[0], pos
                pos += 1
            other_pos = {s: min(p + 1, 299) for s, p in other_pos.items()}
            worst = max(worst, (got - ref[pos_done]).abs().max().item())
    assert worst <= ATOL


def test_softcap_override_changes_logits():
    from conftest import GOLDEN
    from nanochat_gateway import load_model

    base = golden_model("2026-07")
    capped = load_model(GOLDEN / "2026-07", softcap=20.0)
    assert capped.spec.softcap == 20.0
    ids = torch.tensor([golden_expected("2026-07")["prompt"][:20]])
    with torch.inference_mode():
        assert not torch.allclose(base.model(ids), capped.model(ids))


def test_bfloat16_serving_agrees_with_float32_mostly():
    """bf16 weights are converted once at load; greedy output stays close to fp32."""
    from conftest import GOLDEN
    from nanochat_gateway import load_model

    loaded = load_model(GOLDEN / "2026-07", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    expected = golden_expected("2026-07")
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([expected["prompt"]]))[0]
    assert logits.dtype == torch.float32
    agree = (logits.argmax(-1) == expected["logits"].argmax(-1)).float().mean().item()
    assert agree > 0.8
