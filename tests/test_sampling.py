"""RowSampler edge cases: temperatures so small that dividing by them overflows, top_p below float32."""

from __future__ import annotations

import pytest
import torch

from nanochat_gateway.engine.request import SamplingParams
from nanochat_gateway.engine.sampling import GREEDY_BELOW_TEMPERATURE, RowSampler, select_tokens


@pytest.mark.parametrize("temperature", [1e-38, 1e-30, 1e-12, GREEDY_BELOW_TEMPERATURE / 2])
def test_temperatures_below_the_epsilon_are_greedy(temperature):
    logits = torch.randn(4, 4096, generator=torch.Generator().manual_seed(0)) * 10
    samplers = [RowSampler(SamplingParams(temperature=temperature), seed=i, device=torch.device("cpu"))
                for i in range(4)]
    tokens, _ = select_tokens(logits, samplers)
    assert tokens == logits.argmax(dim=-1).tolist()
    assert all(s.greedy for s in samplers)


def test_the_epsilon_itself_still_samples():
    sampler = RowSampler(SamplingParams(temperature=GREEDY_BELOW_TEMPERATURE), seed=0, device=torch.device("cpu"))
    assert not sampler.greedy
    row = torch.zeros(8)
    row[3] = 1.0
    assert select_tokens(row[None], [sampler])[0] == [3]


@pytest.mark.parametrize("top_p", [1e-300, 1e-45, 1e-8])
def test_a_top_p_too_small_for_float32_keeps_the_most_likely_token(top_p):
    # 1e-300 is 0.0 in float32: every cumulative mass then "reaches" it, the first token included.
    logits = torch.randn(4, 4096, generator=torch.Generator().manual_seed(1)) * 3
    logits[:, 0] = -1e9  # token 0 is what an all-zero distribution fell back to
    samplers = [RowSampler(SamplingParams(temperature=1.0, top_p=top_p), seed=i, device=torch.device("cpu"))
                for i in range(4)]
    tokens, _ = select_tokens(logits, samplers)
    assert tokens == logits.argmax(dim=-1).tolist()
