"""Hugging Face sources: parsing, two-phase fetching from a pre-filled cache, errors. No network.

Every test runs with HF_HUB_OFFLINE=1 and HF_HOME/HF_HUB_CACHE in tmp_path; sockets to the
internet fail the test. The cache is written by ``make_hf_cache`` in huggingface_hub's layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import types
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.utils import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    filter_repo_objects,
)

from conftest import GOLDEN
from nanochat_gateway import load_model
from nanochat_gateway.model.checkpoint import CheckpointError, find_checkpoint
from nanochat_gateway.model.hub import (
    SMALL_FILE_PATTERNS,
    HubError,
    download_checkpoint,
    hub_reachable,
    is_cached,
    parse_hf_source,
)

SRC = GOLDEN / "2026-07"
REPO = "owner/repo"
OPTIM = "optim_000700_rank0.pt"
LFS_SUFFIXES = (".pt", ".pkl")  # the Hub's default .gitattributes stores these with git-lfs


# --- a Hugging Face cache, written the way huggingface_hub writes it -------------------------


def git_blob_sha1(data: bytes) -> str:
    """Git's object id for a file: what the Hub sends as ETag for files not in LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


def commit_hash(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


def make_hf_cache(
    cache: Path,
    repo_id: str,
    files: dict[str, bytes],
    *,
    commit: str,
    cached: Iterable[str] | None = None,
    refs: Iterable[str] = ("main",),
    tree_listing: bool = True,
) -> Path:
    """Put one commit of ``repo_id`` into ``cache`` as huggingface_hub does; return its snapshot dir.

    models--owner--repo/
      blobs/<etag>                  content; etag = sha256 for LFS files, git blob sha1 otherwise
      snapshots/<commit>/<path>     relative symlink to ../../blobs/<etag> (one ../ more per subfolder)
      refs/<branch>                 the commit hash, no newline
      trees/<commit>.json           the repo listing (huggingface_hub >= 2), files not cached included
    ``cached`` (default: all) is what an earlier download fetched; the rest exists only in the listing.
    """
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files if cached is None else cached:
        data = files[path]
        lfs = path.endswith(LFS_SUFFIXES)
        blob = storage / "blobs" / (hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = snapshot / path
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    if tree_listing:
        listing = {}
        for path, data in sorted(files.items()):
            if path.endswith(LFS_SUFFIXES):
                entry = {"size": len(data), "blob_id": git_blob_sha1(lfs_pointer(data)),
                         "lfs_sha256": hashlib.sha256(data).hexdigest(), "lfs_size": len(data)}
            else:
                entry = {"size": len(data), "blob_id": git_blob_sha1(data)}
            listing[path] = entry
        (storage / "trees").mkdir(exist_ok=True)
        (storage / "trees" / f"{commit}.json").write_text(
            json.dumps({"format_version": 1, "files": listing}, indent=1), encoding="utf-8"
        )
    (cache / "CACHEDIR.TAG").write_text(
        "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by "
        "huggingface_hub.\n# For information about cache directory tags, see:\n#\thttps://bford.info/cachedir/\n"
    )
    return snapshot


def golden_meta(step: int) -> bytes:
    meta = json.loads((SRC / "meta_000001.json").read_text())
    return json.dumps({**meta, "step": step}, indent=2).encode()


def flat_repo(*steps: int) -> dict[str, bytes]:
    """Like sdobson/nanochat: model/meta per step and tokenizer.pkl at the top, plus files never needed."""
    files = {"tokenizer.pkl": (SRC / "tokenizer.pkl").read_bytes(), "README.md": b"# nanochat\n",
             OPTIM: b"optimizer state " * 64}
    for step in steps:
        files[f"model_{step:06d}.pt"] = (SRC / "model_000001.pt").read_bytes()
        files[f"meta_{step:06d}.json"] = golden_meta(step)
    return files


def base_dir_repo() -> dict[str, bytes]:
    """A nanochat base dir pushed as is: {base,chatsft}_checkpoints/<tag>/ and tokenizer/."""
    files = {"tokenizer/tokenizer.pkl": (SRC / "tokenizer.pkl").read_bytes(), "tokenizer/token_bytes.pt": b"tb"}
    for folder, tag, step in [("chatsft_checkpoints", "d4", 10), ("chatsft_checkpoints", "d4", 20),
                              ("chatsft_checkpoints", "d2", 5), ("base_checkpoints", "d4", 30)]:
        files[f"{folder}/{tag}/model_{step:06d}.pt"] = (SRC / "model_000001.pt").read_bytes()
        files[f"{folder}/{tag}/meta_{step:06d}.json"] = golden_meta(step)
        files[f"{folder}/{tag}/optim_{step:06d}_rank0.pt"] = b"optimizer state"
    return files


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch) -> Path:
    """Offline, with a private HF_HOME; huggingface_hub read its env at import, so patch constants too."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    for name, value in {"HF_HOME": home, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("HF_TOKEN", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    real_connect = socket.socket.connect

    def no_internet(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            pytest.fail(f"a test tried to open a network connection to {address!r}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", no_internet)
    return cache


def go_online(monkeypatch) -> None:
    """Offline mode off (for code paths that must then not use the network anyway)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def spy(monkeypatch) -> list[dict]:
    """Record every snapshot_download call (its keyword arguments) and still run the real one."""
    calls: list[dict] = []
    real = huggingface_hub.snapshot_download

    def wrapper(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", wrapper)
    return calls


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hf:owner/repo", ("owner/repo", None)),
        ("hf:sdobson/nanochat@main", ("sdobson/nanochat", "main")),
        ("hf:o-1/r_2.x@" + "a" * 40, ("o-1/r_2.x", "a" * 40)),
        ("hf:owner/repo@refs/pr/1", ("owner/repo", "refs/pr/1")),
    ],
)
def test_parse_hf_source(source, expected):
    assert parse_hf_source(source) == expected


@pytest.mark.parametrize(
    "source",
    ["owner/repo", "", "hf:", "hf:owner", "hf:owner/repo/extra", "hf:owner/repo@", "hf://owner/repo",
     "hf:own er/repo", "hf:owner/repo@ main", "hf:owner/repo@a b", "hf:-owner/repo", "hf:a--b/repo",
     "HF:owner/repo", "hf:/repo", "hf:owner/"],
)
def test_malformed_sources_are_refused(source):
    with pytest.raises(HubError, match=r"expected hf:owner/repo or hf:owner/repo@revision"):
        parse_hf_source(source)
    with pytest.raises(HubError):
        download_checkpoint(source)


def test_hub_error_is_a_checkpoint_error_and_a_value_error():
    assert issubclass(HubError, CheckpointError)
    assert issubclass(HubError, ValueError)


# --- flat layout ---------------------------------------------------------------------------------


def test_flat_layout_downloads_and_loads(hf_cache):
    snapshot = make_hf_cache(hf_cache, REPO, flat_repo(500, 700), commit=commit_hash("c1"),
                             cached=["model_000500.pt", "model_000700.pt", "meta_000500.json",
                                     "meta_000700.json", "tokenizer.pkl"])
    assert snapshot == hf_cache / "models--owner--repo" / "snapshots" / commit_hash("c1")

    assert download_checkpoint("hf:owner/repo") == snapshot
    assert download_checkpoint("hf:owner/repo", step=500, progress=False) == snapshot

    loaded = load_model("hf:owner/repo")
    assert loaded.files.layout == "flat"
    assert loaded.files.step == 700
    assert loaded.files.model_path == snapshot / "model_000700.pt"
    assert loaded.meta["step"] == 700
    assert loaded.source == "hf:owner/repo"
    assert load_model("hf:owner/repo", step=500).files.step == 500


def test_partial_cache_serves_the_cached_step(hf_cache):
    """`hf download` of one step leaves other meta files uncached: serve what is there, offline."""
    snapshot = make_hf_cache(hf_cache, REPO, flat_repo(500, 700), commit=commit_hash("c1"),
                             cached=["model_000500.pt", "meta_000500.json", "tokenizer.pkl"])
    assert download_checkpoint("hf:owner/repo") == snapshot
    assert find_checkpoint(snapshot).step == 500
    assert is_cached("hf:owner/repo")
    assert not is_cached("hf:owner/repo", step=700)


def test_cached_meta_without_its_model_offline_is_refused(hf_cache):
    make_hf_cache(hf_cache, REPO, flat_repo(500, 700), commit=commit_hash("c1"),
                  cached=["model_000500.pt", "meta_000500.json", "meta_000700.json", "tokenizer.pkl"])
    with pytest.raises(HubError, match=r"model_000700\.pt is not in the local Hugging Face cache.*HF_HUB_OFFLINE=1"):
        download_checkpoint("hf:owner/repo")
    assert download_checkpoint("hf:owner/repo", step=500).name == commit_hash("c1")


def test_cache_without_tree_listing_missing_model_is_refused(hf_cache):
    """Caches written by huggingface_hub < 2 have no trees/: a missing model comes back silently."""
    make_hf_cache(hf_cache, REPO, flat_repo(700), commit=commit_hash("c1"), tree_listing=False,
                  cached=["meta_000700.json", "tokenizer.pkl"])
    with pytest.raises(HubError, match=r"model_000700\.pt is not in the local Hugging Face cache"):
        download_checkpoint("hf:owner/repo")
    assert not is_cached("hf:owner/repo")


def test_missing_step_is_refused(hf_cache):
    make_hf_cache(hf_cache, REPO, flat_repo(500, 700), commit=commit_hash("c1"))
    with pytest.raises(HubError, match=r"hf:owner/repo: no checkpoint for step 600 .*\[500, 700\]"):
        download_checkpoint("hf:owner/repo", step=600)


# --- revisions -----------------------------------------------------------------------------------


def test_revision_pinned_by_commit_hash_and_by_branch(hf_cache):
    old, new = commit_hash("old"), commit_hash("new")
    make_hf_cache(hf_cache, REPO, flat_repo(500), commit=old, refs=["dev"])
    make_hf_cache(hf_cache, REPO, flat_repo(700), commit=new, refs=["main"])

    assert download_checkpoint("hf:owner/repo").name == new
    assert download_checkpoint(f"hf:owner/repo@{old}").name == old
    assert download_checkpoint("hf:owner/repo@dev").name == old
    assert download_checkpoint(f"hf:owner/repo@{new}").name == new
    assert load_model("hf:owner/repo@dev").files.step == 500
    assert load_model(f"hf:owner/repo@{new}").files.step == 700

    with pytest.raises(HubError, match=r"hf:owner/repo@nope: it is not in the local Hugging Face cache"):
        download_checkpoint("hf:owner/repo@nope")


# --- base-dir layout -----------------------------------------------------------------------------


def test_base_dir_layout_kind_tag_step(hf_cache):
    snapshot = make_hf_cache(hf_cache, "owner/base", base_dir_repo(), commit=commit_hash("b"),
                             cached=[p for p in base_dir_repo() if "optim_" not in p])

    def picked(**kwargs) -> tuple[str | None, int]:
        files = find_checkpoint(download_checkpoint("hf:owner/base", **kwargs), **kwargs)
        return files.tag, files.step

    assert picked() == ("d4", 20)  # largest dN tag, last step
    assert picked(tag="d2") == ("d2", 5)
    assert picked(step=10) == ("d4", 10)
    assert picked(kind="base") == ("d4", 30)

    loaded = load_model("hf:owner/base", tag="d4", step=10)
    assert loaded.files.layout == "base-dir"
    assert loaded.files.model_path == snapshot / "chatsft_checkpoints" / "d4" / "model_000010.pt"
    assert loaded.files.tokenizer_path == snapshot / "tokenizer" / "tokenizer.pkl"

    with pytest.raises(HubError, match=r"no chatrl_checkpoints/ .*found base_checkpoints, chatsft_checkpoints"):
        download_checkpoint("hf:owner/base", kind="rl")
    with pytest.raises(HubError, match=r"no model tag 'd9' in chatsft_checkpoints/ \(have d2, d4\)"):
        download_checkpoint("hf:owner/base", tag="d9")
    with pytest.raises(HubError, match=r"no checkpoint for step 99 in chatsft_checkpoints/d4/"):
        download_checkpoint("hf:owner/base", step=99)
    with pytest.raises(HubError, match="checkpoint kind must be one of"):
        download_checkpoint("hf:owner/base", kind="mid")
    with pytest.raises(HubError, match="model tag must be a folder name"):
        download_checkpoint("hf:owner/base", tag="../d4")


def test_repo_without_meta_files_is_refused(hf_cache):
    make_hf_cache(hf_cache, "owner/other", {"config.json": b"{}", "model.safetensors": b"x" * 10},
                  commit=commit_hash("o"))
    with pytest.raises(HubError, match=r"hf:owner/other: no meta_<step>\.json files in the repo"):
        download_checkpoint("hf:owner/other")


def test_repo_without_tokenizer_is_refused(hf_cache):
    files = flat_repo(700)
    del files["tokenizer.pkl"]
    make_hf_cache(hf_cache, REPO, files, commit=commit_hash("c1"))
    with pytest.raises(HubError, match=r"no tokenizer\.pkl or tokenizer/tokenizer\.pkl in the repo"):
        download_checkpoint("hf:owner/repo")


# --- offline and not cached ----------------------------------------------------------------------


def test_offline_and_not_cached_says_what_to_do(hf_cache):
    with pytest.raises(HubError) as info:
        download_checkpoint("hf:owner/missing")
    message = str(info.value)
    assert message.startswith("hf:owner/missing: it is not in the local Hugging Face cache")
    assert str(hf_cache) in message
    assert "HF_HUB_OFFLINE=1 is set" in message
    assert "run `nanochat-gateway download hf:owner/missing` on a machine with network" in message
    assert "unset HF_HUB_OFFLINE" in message
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_model("hf:owner/missing")


def test_offline_set_in_the_environment_after_import_is_honoured(hf_cache, monkeypatch, spy):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as if the env var came after import
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1 is set"):
        download_checkpoint("hf:owner/missing")
    assert spy[0]["local_files_only"] is True


def test_explicit_cache_dir(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    snapshot = make_hf_cache(elsewhere, REPO, flat_repo(700), commit=commit_hash("c1"))
    assert download_checkpoint("hf:owner/repo", cache_dir=elsewhere) == snapshot
    assert is_cached("hf:owner/repo", cache_dir=elsewhere)
    assert not is_cached("hf:owner/repo")


# --- what is asked of huggingface_hub ------------------------------------------------------------


def test_optimizer_shards_are_never_requested(hf_cache, spy):
    flat, base = flat_repo(500, 700), base_dir_repo()
    make_hf_cache(hf_cache, REPO, flat, commit=commit_hash("c1"))
    make_hf_cache(hf_cache, "owner/base", base, commit=commit_hash("b"))

    download_checkpoint("hf:owner/repo")
    download_checkpoint("hf:owner/base", kind="base")
    assert len(spy) == 4  # two phases each

    optim_files = [OPTIM, "chatsft_checkpoints/d4/optim_000020_rank0.pt", "base_checkpoints/d4/optim_000030_rank0.pt"]
    for call in spy:
        assert call["allow_patterns"]
        assert not list(filter_repo_objects(optim_files, allow_patterns=call["allow_patterns"]))

    phase1_flat, phase2_flat, phase1_base, phase2_base = spy
    assert phase1_flat["allow_patterns"] == phase1_base["allow_patterns"] == SMALL_FILE_PATTERNS
    assert sorted(filter_repo_objects(flat, allow_patterns=SMALL_FILE_PATTERNS)) == [
        "meta_000500.json", "meta_000700.json", "tokenizer.pkl"]
    assert sorted(filter_repo_objects(base, allow_patterns=SMALL_FILE_PATTERNS)) == sorted(
        p for p in base if p.endswith(".json") or p == "tokenizer/tokenizer.pkl")

    # Phase 2: exactly one model file, at the commit phase 1 resolved.
    assert list(filter_repo_objects(flat, allow_patterns=phase2_flat["allow_patterns"])) == ["model_000700.pt"]
    assert list(filter_repo_objects(base, allow_patterns=phase2_base["allow_patterns"])) == [
        "base_checkpoints/d4/model_000030.pt"]
    assert phase1_flat.get("revision") is None
    assert phase2_flat["revision"] == commit_hash("c1")
    assert phase2_base["revision"] == commit_hash("b")


def test_progress_and_token_options(hf_cache, spy, monkeypatch):
    make_hf_cache(hf_cache, REPO, flat_repo(700), commit=commit_hash("c1"))

    download_checkpoint("hf:owner/repo")
    assert all(call["tqdm_class"] is None for call in spy)  # huggingface_hub's own bars
    assert all("token" not in call and "cache_dir" not in call for call in spy)  # its own defaults

    spy.clear()
    download_checkpoint("hf:owner/repo", progress=False, token="hf_test_token")
    assert all(call["token"] == "hf_test_token" for call in spy)
    # Offline, huggingface_hub returns before drawing any bar, so check the class handed to it:
    # disabled even when TQDM_POSITION=-1 would force huggingface_hub's bars on.
    monkeypatch.setenv("TQDM_POSITION", "-1")
    for call in spy:
        bar = call["tqdm_class"](total=3, desc="Fetching 3 files")
        assert bar.disable
        bar.close()


# --- error translation (huggingface_hub replaced by a stub: no network either way) ---------------


def _http_error(cls: type[HfHubHTTPError], status: int) -> HfHubHTTPError:
    response = types.SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(f"{status} Client Error", response=response)


def _connect_failure() -> LocalEntryNotFoundError:
    try:
        raise LocalEntryNotFoundError("cannot find the snapshot folder") from ConnectionError("Connection refused")
    except LocalEntryNotFoundError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "pattern"),
    [
        (lambda: _http_error(RepositoryNotFoundError, 404),
         r"repository owner/repo not found on .*check the name, or set HF_TOKEN"),
        (lambda: _http_error(RevisionNotFoundError, 404), r"revision 'v2' not found in owner/repo"),
        (lambda: _http_error(GatedRepoError, 403), r"owner/repo is gated; accept its terms"),
        (lambda: _http_error(HfHubHTTPError, 401), r"the Hub refused the request \(401 Client Error\)"),
        (_connect_failure, r"could not reach .*\(ConnectionError: Connection refused\) and it is not in the local"),
        (lambda: ConnectionResetError("Connection reset by peer"),
         r"download failed \(ConnectionResetError: Connection reset by peer\); check the network"),
    ],
)
def test_hub_failures_become_hub_errors(monkeypatch, error, pattern):
    go_online(monkeypatch)

    def failing(repo_id, **kwargs):
        raise error()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(HubError, match=r"^hf:owner/repo@v2: " + pattern):
        download_checkpoint("hf:owner/repo@v2")


# --- is_cached / hub_reachable -------------------------------------------------------------------


def test_is_cached(hf_cache, monkeypatch):
    make_hf_cache(hf_cache, REPO, flat_repo(700), commit=commit_hash("c1"))
    make_hf_cache(hf_cache, "owner/base", base_dir_repo(), commit=commit_hash("b"),
                  cached=["tokenizer/tokenizer.pkl", "chatsft_checkpoints/d4/meta_000020.json"])
    assert is_cached("hf:owner/repo")
    assert is_cached("hf:owner/repo@main")
    assert is_cached(f"hf:owner/repo@{commit_hash('c1')}")
    assert not is_cached("hf:owner/repo@dev")
    assert not is_cached("hf:owner/repo", step=500)
    assert not is_cached("hf:owner/missing")
    assert not is_cached("hf:owner/base")  # meta cached, model not
    with pytest.raises(HubError):
        is_cached("owner/repo")

    go_online(monkeypatch)  # never uses the network, even when allowed to
    assert is_cached("hf:owner/repo")
    assert not is_cached("hf:owner/missing")


def test_hub_reachable_is_false_at_once_when_offline(monkeypatch):
    def must_not_run(*args, **kwargs):
        pytest.fail("hub_reachable made a request in offline mode")

    monkeypatch.setattr(urllib.request, "urlopen", must_not_run)
    assert hub_reachable() is False
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # env var alone is enough
    assert hub_reachable() is False


def test_hub_reachable_is_false_when_the_request_fails(monkeypatch):
    go_online(monkeypatch)
    seen = []

    def failing(request, timeout):
        seen.append((request.get_method(), request.full_url, timeout))
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", failing)
    assert hub_reachable(timeout=0.5) is False
    assert seen == [("HEAD", constants.ENDPOINT, 0.5)]


def test_hub_reachable_counts_http_answers(monkeypatch):
    go_online(monkeypatch)
    status = {"code": 404}

    def answering(request, timeout):
        raise urllib.error.HTTPError(request.full_url, status["code"], "x", {}, None)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", answering)
    assert hub_reachable() is True
    status["code"] = 503
    assert hub_reachable() is False


# --- the cache written above is the one huggingface_hub reads ------------------------------------


def test_fake_cache_matches_huggingface_hub_layout(hf_cache):
    files = flat_repo(700) | {"sub/dir/file.txt": b"nested"}
    snapshot = make_hf_cache(hf_cache, REPO, files, commit=commit_hash("c1"))

    report = huggingface_hub.scan_cache_dir(hf_cache)
    assert report.warnings == []
    (repo,) = report.repos
    assert (repo.repo_id, repo.repo_type) == (REPO, "model")
    (revision,) = repo.revisions
    assert revision.commit_hash == commit_hash("c1")
    assert revision.refs == frozenset({"main"})
    assert {f.file_name for f in revision.files} == {Path(p).name for p in files}

    for path in files:
        expected = str(snapshot / path)
        assert huggingface_hub.try_to_load_from_cache(REPO, path) == expected
        assert huggingface_hub.hf_hub_download(REPO, path) == expected  # offline: served from the cache
    if hasattr(huggingface_hub, "get_cached_repo_tree"):  # huggingface_hub >= 2
        listing = {f.path: f for f in huggingface_hub.get_cached_repo_tree(REPO)}
        assert set(listing) == set(files)
        assert listing["model_000700.pt"].size == len(files["model_000700.pt"])
