"""Which checkpoint to serve: turn [model] source into a local directory.

The empty default means: the Hugging Face repo DEFAULT_HF_SOURCE when it is cached or the
hub answers, otherwise a locally generated demo model with random weights, so that
`serve` starts on a machine with no network and no model.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nanochat_gateway.model.demo import is_demo_dir, write_demo_checkpoint

log = logging.getLogger(__name__)

DEFAULT_HF_SOURCE = "hf:sdobson/nanochat"
DEMO_MODEL_ID = "nanochat-demo-random-weights"


@dataclass(frozen=True)
class ResolvedSource:
    source: str  # as configured, or the default chosen
    local_path: Path
    model_id: str
    is_demo: bool
    seconds: float  # time spent resolving (download or demo generation)


def default_demo_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nanochat-gateway" / "demo-tiny"


def choose_default_source() -> str:
    """The hub default when usable (cached, or reachable), else the demo model."""
    from nanochat_gateway.model.hub import hub_reachable, is_cached

    if is_cached(DEFAULT_HF_SOURCE) or hub_reachable():
        return DEFAULT_HF_SOURCE
    log.warning(
        "no [model] source is configured and the Hugging Face hub is unreachable: serving a DEMO model "
        "with RANDOM WEIGHTS (its output is gibberish); set [model] source to serve a real checkpoint"
    )
    return "demo"


def derive_model_id(source: str, local_path: Path, is_demo: bool) -> str:
    if is_demo:
        return DEMO_MODEL_ID
    if source.startswith("hf:"):
        return source[3:].split("@", 1)[0]
    return local_path.name or "nanochat"


def resolve_source(
    source: str, *, model_id: str = "", demo_dir: str = "", kind: str = "sft",
    tag: str | None = None, step: int | None = None,
) -> ResolvedSource:
    """Make the configured source available locally: download, or write the demo model."""
    start = time.monotonic()
    source = source or choose_default_source()
    is_demo = source == "demo"
    if is_demo:
        local = Path(demo_dir).expanduser() if demo_dir else default_demo_dir()
        if not is_demo_dir(local):
            log.info("writing the demo model (random weights) to %s", local)
            write_demo_checkpoint(local, "tiny", tokenizer_cache=local.parent / "tokenizers")
    elif source.startswith("hf:"):
        from nanochat_gateway.model.hub import download_checkpoint

        local = download_checkpoint(source, kind=kind, tag=tag, step=step)
    else:
        local = Path(source).expanduser()
    resolved_id = model_id or derive_model_id(source, local, is_demo)
    return ResolvedSource(source, local, resolved_id, is_demo, time.monotonic() - start)
