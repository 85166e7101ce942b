"""Checkpoint discovery and refusal of files that cannot be served."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import GOLDEN
from nanochat_gateway import load_model
from nanochat_gateway.model.checkpoint import CheckpointError, find_checkpoint
from nanochat_gateway.model.tokenizer import TokenizerError


def _copy_golden(tmp_path, generation="2026-07", name="ckpt"):
    dest = tmp_path / name
    shutil.copytree(GOLDEN / generation, dest)
    for extra in ("expected.pt", "chat.json"):
        (dest / extra).unlink()
    return dest


def test_truncated_model_file_is_refused_naming_the_file(tmp_path):
    ckpt = _copy_golden(tmp_path)
    model = ckpt / "model_000001.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model_000001\.pt: cannot read the checkpoint"):
        load_model(ckpt)


def test_non_tensor_pickle_is_refused(tmp_path):
    ckpt = _copy_golden(tmp_path)
    torch.save({"weights": [1, 2, 3]}, ckpt / "model_000001.pt")
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_model(ckpt)


def test_shape_mismatch_names_key(tmp_path):
    ckpt = _copy_golden(tmp_path)
    sd = torch.load(ckpt / "model_000001.pt", weights_only=True)
    sd["transformer.h.0.mlp.c_fc.weight"] = sd["transformer.h.0.mlp.c_fc.weight"][:-1]
    torch.save(sd, ckpt / "model_000001.pt")
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight has shape"):
        load_model(ckpt)


def test_missing_key_is_refused(tmp_path):
    ckpt = _copy_golden(tmp_path)
    sd = torch.load(ckpt / "model_000001.pt", weights_only=True)
    del sd["lm_head.weight"]
    torch.save(sd, ckpt / "model_000001.pt")
    with pytest.raises(CheckpointError, match="missing keys.*lm_head.weight"):
        load_model(ckpt)


def test_wrong_generation_override_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not match generation 2025-10"):
        load_model(GOLDEN / "2026-07", architecture="2025-10")


def test_vocab_mismatch_between_tokenizer_and_model(tmp_path):
    ckpt = _copy_golden(tmp_path)
    meta = json.loads((ckpt / "meta_000001.json").read_text())
    meta["model_config"]["vocab_size"] = 301
    (ckpt / "meta_000001.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="tokenizer has 300 tokens"):
        load_model(ckpt)


def test_malicious_tokenizer_is_refused(tmp_path):
    ckpt = _copy_golden(tmp_path)
    marker = tmp_path / "pwned"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (ckpt / "tokenizer.pkl").write_bytes(payload)
    with pytest.raises(TokenizerError, match="refusing to load global 'os.system'"):
        load_model(ckpt)
    assert not marker.exists()


def test_orig_mod_prefix_is_accepted(tmp_path):
    ckpt = _copy_golden(tmp_path)
    sd = torch.load(ckpt / "model_000001.pt", weights_only=True)
    torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, ckpt / "model_000001.pt")
    assert load_model(ckpt).architecture == "2026-07"


def test_bf16_stored_embeddings_are_accepted(tmp_path):
    """Checkpoints trained on CUDA store wte and value embeddings in bf16."""
    ckpt = _copy_golden(tmp_path)
    sd = torch.load(ckpt / "model_000001.pt", weights_only=True)
    for key in sd:
        if "wte" in key or "value_embeds" in key:
            sd[key] = sd[key].bfloat16()
    torch.save(sd, ckpt / "model_000001.pt")
    loaded = load_model(ckpt)
    assert loaded.model.transformer.wte.weight.dtype == torch.float32


def _base_dir(tmp_path):
    base = tmp_path / "nanochat"
    (base / "tokenizer").mkdir(parents=True)
    shutil.copy(GOLDEN / "2026-07" / "tokenizer.pkl", base / "tokenizer" / "tokenizer.pkl")
    for kind, tags in {"base_checkpoints": ["d4"], "chatsft_checkpoints": ["d4", "d12", "d8"]}.items():
        for tag in tags:
            for step in (5, 700, 40):
                d = base / kind / tag
                d.mkdir(parents=True, exist_ok=True)
                shutil.copy(GOLDEN / "2026-07" / "model_000001.pt", d / f"model_{step:06d}.pt")
                shutil.copy(GOLDEN / "2026-07" / "meta_000001.json", d / f"meta_{step:06d}.json")
                (d / f"optim_{step:06d}_rank0.pt").write_bytes(b"never read")
    return base


def test_base_dir_defaults_to_largest_tag_and_last_step(tmp_path):
    files = find_checkpoint(_base_dir(tmp_path))
    assert (files.layout, files.tag, files.step) == ("base-dir", "d12", 700)
    assert files.model_path.name == "model_000700.pt"
    assert files.tokenizer_path.parent.name == "tokenizer"


def test_base_dir_kind_tag_and_step_are_selectable(tmp_path):
    base = _base_dir(tmp_path)
    files = find_checkpoint(base, kind="base", tag="d4", step=40)
    assert files.model_path == base / "base_checkpoints" / "d4" / "model_000040.pt"
    with pytest.raises(CheckpointError, match="no checkpoint for step 41"):
        find_checkpoint(base, kind="sft", tag="d8", step=41)
    with pytest.raises(CheckpointError, match="chatrl_checkpoints"):
        find_checkpoint(base, kind="rl")
    assert load_model(base, tag="d8").files.tag == "d8"


def test_missing_meta_is_reported(tmp_path):
    ckpt = _copy_golden(tmp_path)
    (ckpt / "meta_000001.json").unlink()
    with pytest.raises(CheckpointError, match=r"meta_000001\.json: missing"):
        load_model(ckpt)


def test_describe_reports_kv_bytes_per_token():
    loaded = load_model(GOLDEN / "2026-03")
    facts = loaded.describe()
    # 4 layers x (k + v) x 2 kv heads x 16 dims x 4 bytes
    assert facts["kv_cache_bytes_per_token"] == 4 * 2 * 2 * 16 * 4
    assert facts["generation"] == "2026-03" and facts["windows"] == [256, 256, 256, 512]
