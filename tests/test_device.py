"""dtype = "auto": decided by the device's capabilities and the model's width, the same at every start."""

from __future__ import annotations

import importlib
import itertools
import random

import pytest
import torch

from nanochat_gateway.model import device as device_module

CPU = torch.device("cpu")


def restart(monkeypatch: pytest.MonkeyPatch, flags: set[str]):
    """A fresh import of the device module (as after a restart) on a CPU reporting ``flags``."""
    module = importlib.reload(device_module)
    monkeypatch.setattr(module, "cpu_flags", lambda: frozenset(flags))
    return module


def test_the_same_cpu_and_model_always_get_the_same_dtype(monkeypatch):
    # A busy machine: every clock reading jumps by a random amount, as timings did under load.
    rng = random.Random(0)
    ticks = itertools.accumulate(rng.uniform(1e-6, 1e-1) for _ in range(10**6))
    monkeypatch.setattr("time.perf_counter", lambda: next(ticks))
    for n_embd in (128, 512, 1280):
        chosen = {restart(monkeypatch, {"avx512f", "avx512_bf16"}).resolve_dtype("auto", CPU, n_embd)
                  for _ in range(12)}
        assert len(chosen) == 1, (n_embd, chosen)
    importlib.reload(device_module)


@pytest.mark.parametrize("flags, n_embd, dtype, why", [
    ({"avx512f"}, 2048, torch.float32, "no native bf16"),
    ({"avx512_bf16"}, 128, torch.float32, "n_embd 128 < 512"),
    ({"avx512_bf16"}, 512, torch.bfloat16, "avx512_bf16 and n_embd 512 >= 512"),
    ({"amx_bf16", "avx512_bf16"}, 1280, torch.bfloat16, "amx_bf16/avx512_bf16"),
])
def test_auto_on_the_cpu_says_why(monkeypatch, flags, n_embd, dtype, why):
    module = restart(monkeypatch, flags)
    choice = module.choose_dtype("auto", CPU, n_embd)
    assert choice.dtype == dtype and why in choice.reason
    importlib.reload(device_module)


def test_an_explicit_dtype_is_taken_as_given():
    choice = device_module.choose_dtype("bfloat16", CPU, 64)
    assert choice.dtype == torch.bfloat16 and choice.reason == "set explicitly"


def test_inspect_shows_the_dtype_and_why(tiny_model_dir, capsys):
    from nanochat_gateway.cli import main

    assert main(["inspect", str(tiny_model_dir)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dtype"))
    assert "(auto: " in line
    assert main(["inspect", str(tiny_model_dir), "--json"]) == 0
    assert '"dtype_reason": "auto: ' in capsys.readouterr().out
