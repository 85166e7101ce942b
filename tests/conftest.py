"""Shared fixtures: golden checkpoints, a tiny demo checkpoint, loaded models."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
GENERATIONS = ["2025-10", "2025-12", "2026-01", "2026-03", "2026-07"]

# Two intra-op threads at most: CI has 2 cores and tests run next to servers they start.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@functools.cache
def golden_model(generation: str):
    """A golden checkpoint loaded once per test session (read-only use only)."""
    from nanochat_gateway import load_model

    return load_model(GOLDEN / generation)


@functools.cache
def golden_expected(generation: str) -> dict:
    return torch.load(GOLDEN / generation / "expected.pt", weights_only=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 'tiny' demo checkpoint (current generation, random weights), written once."""
    from nanochat_gateway.model.demo import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "tiny", "tiny")
