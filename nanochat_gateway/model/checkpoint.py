"""Find, read and validate nanochat checkpoints on disk.

Two layouts are understood:
- flat: one directory holding model_<step>.pt, meta_<step>.json and tokenizer.pkl
  (the layout of the sdobson/nanochat repository), tokenizer possibly in tokenizer/;
- base dir: nanochat's $NANOCHAT_BASE_DIR, with {base,chatsft,chatrl}_checkpoints/<tag>/
  and tokenizer/tokenizer.pkl; the tag defaults to the largest dN and the step to the last,
  as nanochat chooses them.

Weights are read with ``torch.load(weights_only=True, mmap=True)``: no code runs and the
file is paged in lazily, so a multi-GB checkpoint starts quickly. Once a tensor has been
converted (to bf16, or to int8), ``release_pages`` hands its pages back, so loading never holds
the whole float checkpoint and the converted model at once.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIRS = {"base": "base_checkpoints", "sft": "chatsft_checkpoints", "rl": "chatrl_checkpoints"}
_MODEL_RE = re.compile(r"^model_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be served; the message names the file and the problem."""


@dataclass(frozen=True)
class CheckpointFiles:
    model_path: Path
    meta_path: Path
    tokenizer_path: Path
    step: int
    layout: str  # "flat" or "base-dir"
    tag: str | None = None


def _steps(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _MODEL_RE.match(p.name)))


def _largest_tag(checkpoints_dir: Path) -> str:
    tags = [p for p in checkpoints_dir.iterdir() if p.is_dir()]
    if not tags:
        raise CheckpointError(f"{checkpoints_dir}: no model tags (expected subfolders like d20)")
    depths = [(int(m.group(1)), p.name) for p in tags if (m := re.match(r"d(\d+)", p.name))]
    if depths:
        return max(depths)[1]
    return max(tags, key=lambda p: p.stat().st_mtime).name  # nanochat's fallback: newest


def choose_step(steps: list[int], step: int | None, *, where: str, files: str = "model_<step>.pt",
                error: type[CheckpointError] = CheckpointError) -> int:
    """The requested step, or the last one as nanochat picks it, from the steps present."""
    if not steps:
        raise error(f"no {files} files in {where}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise error(f"no checkpoint for step {step} in {where} (have {steps})")
    return step


def _pick_step(directory: Path, step: int | None) -> int:
    return choose_step(_steps(directory), step, where=str(directory))


def _find_tokenizer(*candidates: Path) -> Path:
    for directory in candidates:
        for path in (directory / "tokenizer.pkl", directory / "tokenizer" / "tokenizer.pkl"):
            if path.is_file():
                return path
    where = ", ".join(str(c) for c in candidates)
    raise CheckpointError(f"tokenizer.pkl not found (looked in {where} and their tokenizer/ folders)")


def find_checkpoint(
    source: str | Path, *, kind: str = "sft", tag: str | None = None, step: int | None = None
) -> CheckpointFiles:
    """Locate model, meta and tokenizer files for a flat dir or a nanochat base dir."""
    root = Path(source).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    if _steps(root):
        chosen = _pick_step(root, step)
        return CheckpointFiles(
            model_path=root / f"model_{chosen:06d}.pt",
            meta_path=_meta_path(root, chosen),
            tokenizer_path=_find_tokenizer(root, root.parent),
            step=chosen,
            layout="flat",
        )
    if kind not in CHECKPOINT_DIRS:
        raise CheckpointError(f"checkpoint kind must be one of {sorted(CHECKPOINT_DIRS)}, got {kind!r}")
    checkpoints = root / CHECKPOINT_DIRS[kind]
    if not checkpoints.is_dir():
        present = [d for d in CHECKPOINT_DIRS.values() if (root / d).is_dir()]
        hint = f" (found {', '.join(present)}; set [model] checkpoint_kind)" if present else ""
        raise CheckpointError(f"{root}: no model_<step>.pt files and no {checkpoints.name}/ folder{hint}")
    tag = tag or _largest_tag(checkpoints)
    tag_dir = checkpoints / tag
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir}: no such model tag")
    chosen = _pick_step(tag_dir, step)
    return CheckpointFiles(
        model_path=tag_dir / f"model_{chosen:06d}.pt",
        meta_path=_meta_path(tag_dir, chosen),
        tokenizer_path=_find_tokenizer(root, tag_dir),
        step=chosen,
        layout="base-dir",
        tag=tag,
    )


def _meta_path(directory: Path, step: int) -> Path:
    path = directory / f"meta_{step:06d}.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (every model_<step>.pt needs its meta_<step>.json)")
    return path


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read meta JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config"), dict):
        raise CheckpointError(f"{path}: no 'model_config' object")
    return meta


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by nanochat key; a torch.compile `_orig_mod.` prefix is dropped."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({reason}); the file is truncated, corrupt, "
            "or not a plain state dict of tensors"
        ) from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("_orig_mod."): v for k, v in raw.items()}


_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim the pages now; file data is re-read on next access
_libc: ctypes.CDLL | None = None


def release_pages(tensor: torch.Tensor) -> None:
    """Ask the kernel to reclaim the resident pages under a tensor read from an mmap'd file.

    Non-destructive (a later access reads the data again), and a no-op where unsupported:
    it only lowers the peak resident memory of a load that converts every tensor.
    """
    global _libc
    nbytes = tensor.numel() * tensor.element_size()
    if tensor.device.type != "cpu" or nbytes < mmap.PAGESIZE:
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        # only the pages wholly inside the tensor: its neighbours may still be in use
        start = -(-tensor.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (tensor.data_ptr() + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            _libc.madvise(start, end - start, _MADV_PAGEOUT)
    except (OSError, AttributeError):
        pass
