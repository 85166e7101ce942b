"""Fetch nanochat checkpoints from the Hugging Face Hub into the standard Hugging Face cache.

Only what a server needs is downloaded, in two phases: first the small files (meta JSON and the
tokenizer), then the single ``model_<step>.pt`` chosen from them. Optimizer shards and everything
else in the repo are never fetched.

huggingface_hub itself honours HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE,
so the files land where every other Hugging Face tool looks for them.
"""

from __future__ import annotations

import glob
import http.client
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

# huggingface_hub.utils loads these lazily, which a type checker cannot follow.
from huggingface_hub.utils import tqdm as hf_tqdm  # type: ignore[attr-defined]
from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

from nanochat_gateway.model.checkpoint import (
    CHECKPOINT_DIRS,
    CheckpointError,
    _largest_tag,
    choose_step,
    find_checkpoint,
)

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
# Phase 1: everything needed to choose a step, and nothing large.
SMALL_FILE_PATTERNS = ["meta_*.json", "tokenizer.pkl", "tokenizer/tokenizer.pkl", "*_checkpoints/*/meta_*.json"]
_META_RE = re.compile(r"^meta_(\d+)\.json$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_FORM = "expected hf:owner/repo or hf:owner/repo@revision"
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubError(CheckpointError):
    """A Hugging Face source that cannot be fetched; the message names the repo and what to do.

    A CheckpointError (hence a ValueError), so callers of load_model handle it like any bad source.
    """


class _SilentTqdm(hf_tqdm):
    """huggingface_hub's progress bar, always disabled (progress=False)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]


def parse_hf_source(source: str) -> tuple[str, str | None]:
    """Split ``hf:owner/repo[@revision]`` into (repo_id, revision); revision None means the default branch."""
    if not isinstance(source, str) or not source.startswith(HF_PREFIX):
        raise HubError(f"{source!r}: not a Hugging Face source ({_FORM})")
    repo_id, at, revision = source.removeprefix(HF_PREFIX).partition("@")
    if at and not revision:
        raise HubError(f"{source!r}: empty revision after '@' ({_FORM})")
    if revision != revision.strip() or any(c.isspace() for c in revision):
        raise HubError(f"{source!r}: the revision must not contain whitespace ({_FORM})")
    if repo_id.count("/") != 1:
        raise HubError(f"{source!r}: the repo must be owner/repo ({_FORM})")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"{source!r}: {exc} ({_FORM})") from None
    return repo_id, revision or None


def download_checkpoint(
    source: str,
    *,
    kind: str = "sft",
    tag: str | None = None,
    step: int | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    progress: bool = True,
) -> Path:
    """Fetch the files needed to serve ``hf:owner/repo[@revision]`` and return the snapshot directory.

    The directory is readable by ``find_checkpoint(path, kind=kind, tag=tag, step=step)``. Files already
    in the cache are not downloaded again; with HF_HUB_OFFLINE=1 only the cache is used.
    Raises HubError when the repo, revision or step cannot be fetched or is not cached.
    """
    return _fetch(
        source, kind=kind, tag=tag, step=step, cache_dir=cache_dir, token=token, progress=progress,
        local_only=_offline_requested(),
    )


def is_cached(
    source: str,
    *,
    kind: str = "sft",
    tag: str | None = None,
    step: int | None = None,
    cache_dir: str | Path | None = None,
) -> bool:
    """True when ``source`` can be served from the local Hugging Face cache alone, without network.

    Raises HubError only for a malformed source.
    """
    parse_hf_source(source)
    try:
        local = _fetch(
            source, kind=kind, tag=tag, step=step, cache_dir=cache_dir, token=None, progress=False,
            local_only=True,
        )
        find_checkpoint(local, kind=kind, tag=tag, step=step)
    except CheckpointError:  # HubError included
        return False
    return True


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hub endpoint answers within ``timeout`` seconds; False at once when offline mode is on."""
    if _offline_requested():
        return False
    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bool(response.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500  # an answer, even 4xx, means the network path works
    except (OSError, ValueError, http.client.HTTPException):  # no route, DNS, timeout, bad HF_ENDPOINT
        return False


def pick_model_file(snapshot: Path, *, kind: str = "sft", tag: str | None = None, step: int | None = None) -> str:
    """Repo path of the ``model_<step>.pt`` to fetch, chosen from the meta files already in ``snapshot``.

    Mirrors find_checkpoint, which needs the model files themselves: the flat layout wins when the
    repo root has meta files (largest step unless ``step``); otherwise ``<kind>_checkpoints/<tag>/``
    with the largest dN tag unless ``tag``, then the last step. Raises HubError naming repo paths.
    """
    steps = _meta_steps(snapshot)
    if steps:
        return f"model_{_choose_step(steps, step, 'the repo root'):06d}.pt"
    if kind not in CHECKPOINT_DIRS:
        raise HubError(f"checkpoint kind must be one of {sorted(CHECKPOINT_DIRS)}, got {kind!r}")
    folder = CHECKPOINT_DIRS[kind]
    checkpoints = snapshot / folder
    if not checkpoints.is_dir():
        present = [d for d in CHECKPOINT_DIRS.values() if (snapshot / d).is_dir()]
        if present:
            raise HubError(f"no {folder}/ in the repo (found {', '.join(present)}; set [model] checkpoint_kind)")
        raise HubError(
            "no meta_<step>.json files in the repo (neither at the top level nor in "
            f"{{{','.join(sorted(CHECKPOINT_DIRS.values()))}}}/<tag>/); is it a nanochat checkpoint repo?"
        )
    if tag is not None and (not tag or "/" in tag or "\\" in tag or tag in {".", ".."}):
        raise HubError(f"model tag must be a folder name like d20, got {tag!r}")
    try:
        tag = tag or _largest_tag(checkpoints)
    except CheckpointError:
        raise HubError(f"no model tags in {folder}/ (expected subfolders like d20)") from None
    if not (checkpoints / tag).is_dir():
        tags = sorted(p.name for p in checkpoints.iterdir() if p.is_dir())
        raise HubError(f"no model tag {tag!r} in {folder}/ (have {', '.join(tags)})")
    chosen = _choose_step(_meta_steps(checkpoints / tag), step, f"{folder}/{tag}/")
    return f"{folder}/{tag}/model_{chosen:06d}.pt"


def _fetch(
    source: str,
    *,
    kind: str,
    tag: str | None,
    step: int | None,
    cache_dir: str | Path | None,
    token: str | None,
    progress: bool,
    local_only: bool,
) -> Path:
    repo_id, revision = parse_hf_source(source)
    options: dict[str, Any] = {"local_files_only": local_only, "tqdm_class": None if progress else _SilentTqdm}
    if cache_dir is not None:
        options["cache_dir"] = str(cache_dir)
    if token is not None:  # otherwise huggingface_hub finds HF_TOKEN or the stored login itself
        options["token"] = token
    # Resuming is left to huggingface_hub, untouched: a transfer that breaks is retried from where it
    # stopped, and only complete blobs enter the cache, so a rerun refetches just what is missing.
    # (huggingface_hub 2.4 discards a killed process's partial *.incomplete file instead of resuming it.)
    with _hub_errors(source, repo_id, revision, cache_dir, local_only):
        snapshot = _small_files(repo_id, revision, options)
    try:
        model_file = pick_model_file(snapshot, kind=kind, tag=tag, step=step)
    except HubError as exc:
        raise HubError(f"{source}: {exc}") from None
    if not any((snapshot / t).is_file() for t in ("tokenizer.pkl", "tokenizer/tokenizer.pkl")):
        raise HubError(f"{source}: no tokenizer.pkl or tokenizer/tokenizer.pkl in the repo")
    # Phase 2 pinned to the commit phase 1 saw, so a branch moving in between cannot mix two commits.
    pinned = snapshot.name if _COMMIT_RE.match(snapshot.name) else revision
    log.info("%s: using %s", source, model_file)
    with _hub_errors(source, repo_id, revision, cache_dir, local_only, missing=model_file):
        snapshot = Path(huggingface_hub.snapshot_download(
            repo_id, revision=pinned, allow_patterns=[glob.escape(model_file)], **options
        ))
    if not (snapshot / model_file).is_file():
        # Caches written without a tree listing (older huggingface_hub) come back partial, not as errors.
        if local_only:
            raise HubError(_offline_message(source, cache_dir, model_file))
        raise HubError(
            f"{source}: {model_file} could not be fetched (the repo has its meta file but not the model, "
            "or the Hub is unreachable and it is not cached); check the step and your network"
        )
    return snapshot


def _small_files(repo_id: str, revision: str | None, options: dict[str, Any]) -> Path:
    """Phase 1: the meta files and tokenizer, from the Hub or, when it cannot be used, the cache."""
    try:
        return Path(huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=SMALL_FILE_PATTERNS, **options
        ))
    except LocalEntryNotFoundError as exc:
        # IncompleteSnapshotError (huggingface_hub >= 2): the cache lacks some meta files the repo has,
        # e.g. after `hf download` of a single step; serving a step that is cached beats failing.
        partial = getattr(exc, "snapshot_path", None)
        if partial is None or not Path(partial).is_dir():
            raise
        log.warning("%s: the cached snapshot is partial; choosing among the cached steps only", repo_id)
        return Path(partial)


@contextmanager
def _hub_errors(
    source: str,
    repo_id: str,
    revision: str | None,
    cache_dir: str | Path | None,
    local_only: bool,
    missing: str = "it",
) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into a HubError that names the repo and what to do."""
    try:
        yield
    except RevisionNotFoundError as exc:
        raise HubError(
            f"{source}: revision {revision!r} not found in {repo_id}; use an existing branch, tag or full commit hash"
        ) from exc
    except GatedRepoError as exc:
        raise HubError(
            f"{source}: {repo_id} is gated; accept its terms at {constants.ENDPOINT}/{repo_id} "
            "and set HF_TOKEN (or run `hf auth login`)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise HubError(
            f"{source}: repository {repo_id} not found on {constants.ENDPOINT} (or it is private and no valid "
            "token was sent); check the name, or set HF_TOKEN / run `hf auth login`"
        ) from exc
    except LocalEntryNotFoundError as exc:  # includes IncompleteSnapshotError
        if local_only:
            raise HubError(_offline_message(source, cache_dir, missing)) from exc
        raise HubError(
            f"{source}: could not reach {constants.ENDPOINT} ({_cause(exc)}) and {missing} is not in the local "
            f"Hugging Face cache ({_cache_path(cache_dir)}); check your network, proxy and HF_ENDPOINT, "
            f"or run `nanochat-gateway download {source}` on a machine with network"
        ) from exc
    except HfHubHTTPError as exc:
        raise HubError(f"{source}: the Hub refused the request ({_first_line(exc)}); check HF_TOKEN or retry later") from exc
    except HFValidationError as exc:
        raise HubError(f"{source}: {exc}") from exc
    except _transfer_errors() as exc:
        raise HubError(
            f"{source}: download failed ({type(exc).__name__}: {_first_line(exc)}); check the network and "
            "that the cache is writable, then run again (files already complete are kept in the cache)"
        ) from exc


def _offline_message(source: str, cache_dir: str | Path | None, missing: str) -> str:
    return (
        f"{source}: {missing} is not in the local Hugging Face cache ({_cache_path(cache_dir)}) and "
        f"HF_HUB_OFFLINE=1 is set; run `nanochat-gateway download {source}` on a machine with network "
        "(and copy the cache here) or unset HF_HUB_OFFLINE"
    )


def _offline_requested() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; a later change of the environment counts too.
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in _TRUE


def _transfer_errors() -> tuple[type[BaseException], ...]:
    """OSError plus the network errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests)."""
    errors: list[type[BaseException]] = [OSError]
    for module, name in (
        ("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException"),
        ("huggingface_hub.errors", "XetDownloadError"),
    ):
        cls = getattr(sys.modules.get(module), name, None)  # only clients already imported can raise
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


def _meta_steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if p.is_file() and (m := _META_RE.match(p.name)))


def _choose_step(steps: list[int], step: int | None, where: str) -> int:
    return choose_step(steps, step, where=where, files="meta_<step>.json", error=HubError)


def _cache_path(cache_dir: str | Path | None) -> str:
    return str(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{type(cause).__name__}: {_first_line(cause)}" if cause is not None else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = [
    "SMALL_FILE_PATTERNS",
    "HubError",
    "download_checkpoint",
    "hub_reachable",
    "is_cached",
    "parse_hf_source",
    "pick_model_file",
]
