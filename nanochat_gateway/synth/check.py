"""`nanochat-gateway synth check FILE`: is every line a conversation nanochat's CustomJSON task loads?"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nanochat_gateway.synth.conversation import conversation_problems, line_digest
from nanochat_gateway.synth.store import StoreError, read_sidecar, sidecar_path

_SHOWN_PROBLEMS = 20


@dataclass
class CheckResult:
    conversations: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line number, problem)
    categories: Counter[str] | None = None  # accepted lines by category, when a sidecar exists

    @property
    def valid(self) -> int:
        return self.conversations - len({line for line, _ in self.problems})


def check_file(path: Path) -> CheckResult:
    """Check every non-blank line of ``path`` (nanochat skips blank ones); count categories from the sidecar."""
    result = CheckResult()
    digests: list[str] = []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for number, raw in enumerate(f, 1):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            result.conversations += 1
            if not raw.endswith("\n"):
                result.problems.append((number, "the last line has no newline (a write cut short?)"))
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                result.problems.append((number, f"not valid JSON: {exc.msg} at column {exc.colno}"))
                continue
            result.problems.extend((number, p) for p in conversation_problems(value))
            digests.append(line_digest(text))
    sidecar = sidecar_path(path)
    if sidecar.exists():
        by_digest = {r.get("digest"): r.get("category", "?") for r in read_sidecar(sidecar).records.values()
                     if r.get("status") == "accepted"}
        result.categories = Counter(by_digest.get(d, "(no record)") for d in digests)
    return result


def run_check(path: Path) -> int:
    """Print the check of ``path``; 0 when every line is valid, 1 otherwise."""
    if not path.is_file():
        print(f"nanochat-gateway: {path}: no such file", file=sys.stderr)
        return 1
    try:
        result = check_file(path)
    except (OSError, StoreError) as exc:
        print(f"nanochat-gateway: {exc}", file=sys.stderr)
        return 1
    for number, problem in result.problems[:_SHOWN_PROBLEMS]:
        print(f"{path}:{number}: {problem}")
    if len(result.problems) > _SHOWN_PROBLEMS:
        print(f"... and {len(result.problems) - _SHOWN_PROBLEMS} more problems")
    if result.categories is not None:
        print("conversations by category (from the sidecar):")
        width = max((len(k) for k in result.categories), default=0)
        for category, n in sorted(result.categories.items()):
            print(f"  {category:<{width}}  {n}")
    if not result.conversations:
        print(f"{path}: holds no conversations")
        return 1
    if result.problems:
        print(f"{path}: {result.valid} of {result.conversations} conversations are valid for nanochat's CustomJSON")
        return 1
    print(f"{path}: {result.conversations} conversations, all valid for nanochat's CustomJSON")
    return 0
