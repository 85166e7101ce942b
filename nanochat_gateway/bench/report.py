"""Benchmark results: percentiles, a printed table, and one final JSON line."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def pair_ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Ratios of runs made back to back, pair by pair; pairs with a zero denominator are left out.

    On a shared machine load drifts between runs, so a ratio within a pair (whose median the
    benchmarks report) is steadier than a ratio of the two sides' best or mean runs.
    """
    return [a / b for a, b in zip(numerators, denominators, strict=True) if b]


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    print(f"\n== {title} ==")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"
        print(f"  {key:<{width}}  {value}")


def print_json_line(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=True, default=str))
