"""The Checkpoint API that scripts rely on: lazy open, role keys, raw names, staging."""

from __future__ import annotations

import pytest
import torch

import surgeon
from surgeon.errors import EditError, RoleError


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def test_open_reads_headers_only(smollm2):
    size = (smollm2 / "model.safetensors").stat().st_size
    before = _bytes_read()
    ck = surgeon.open(smollm2)
    read = _bytes_read() - before
    assert read < 200_000, f"open read {read} bytes of a {size}-byte checkpoint"
    e = ck.entries["model.layers.3.mlp.down_proj.weight"]
    assert e.shape == (576, 1536) and e.dtype == "BF16" and e.file == "model.safetensors"


def test_role_keys_and_raw_names_reach_the_same_tensor(smollm2):
    ck = surgeon.open(smollm2)
    by_role = ck["layers.3.mlp.down"]
    by_name = ck["model.layers.3.mlp.down_proj.weight"]
    assert by_role.dtype == torch.float32 and by_role.shape == (576, 1536)
    assert torch.equal(by_role, by_name)
    assert ck.get("layers.3.mlp.down", dtype=None).dtype == torch.bfloat16
    assert torch.equal(ck["layers.0.norm.pre_mlp"], ck["model.layers.0.post_attention_layernorm.weight"])


def test_tied_lm_head_is_the_embedding(smollm2):
    ck = surgeon.open(smollm2)
    assert ck.tied
    assert ck.resolve("lm_head").tensor == "model.embed_tokens.weight"
    ck["lm_head"] = ck["lm_head"] * 0.5
    assert ck.changed == ["model.embed_tokens.weight"]
    assert torch.allclose(ck["embed"], ck.original("model.embed_tokens.weight").float() * 0.5, rtol=1e-2)


def test_staging_checks_shape_and_casts_to_the_stored_dtype(smollm2):
    ck = surgeon.open(smollm2)
    with pytest.raises(EditError, match=r"layers\.3\.mlp\.down .*shape \(2, 2\) does not match \(576, 1536\)"):
        ck["layers.3.mlp.down"] = torch.zeros(2, 2)
    ck["layers.3.mlp.down"] = torch.full((576, 1536), 1 / 3)
    staged = ck.staged["model.layers.3.mlp.down_proj.weight"]
    assert staged.dtype == torch.bfloat16
    assert torch.equal(staged, torch.full((576, 1536), 1 / 3).bfloat16())
    with pytest.raises(EditError, match="NaN"):
        ck["layers.3.mlp.up"] = torch.full((1536, 576), float("nan"))


def test_unknown_key_names_the_key_and_suggests(smollm2):
    ck = surgeon.open(smollm2)
    with pytest.raises(RoleError, match=r"'layers\.3\.mlp\.dwn'.*did you mean layers\.3\.mlp\.down"):
        ck["layers.3.mlp.dwn"]


def test_reset_drops_staged_changes(smollm2):
    ck = surgeon.open(smollm2)
    ck["layers.1.attn.q"] = ck["layers.1.attn.q"] * 2
    ck.config["vocab_size"] = 1
    ck.reset()
    assert ck.changed == [] and ck.config["vocab_size"] == 49152


def test_hf_cache_snapshot_with_external_links_saves_a_loadable_copy(tmp_path, tiny):
    """A Hugging Face cache snapshot: every file a symlink into ../../blobs. The hub layout opens
    without a flag (links stay inside the repository) and the output is complete (config and
    tokenizer followed, not skipped); a link anywhere else still needs allow_external_links."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny("llama")
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snap.mkdir(parents=True)
    names = sorted(p.name for p in src.iterdir() if p.is_file())
    for i, name in enumerate(names):
        shutil.copyfile(src / name, blobs / f"blob{i}")
        (snap / name).symlink_to(blobs / f"blob{i}")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(snap, elsewhere, symlinks=True)  # the same links, from a folder that is no snapshot
    with pytest.raises(surgeon.errors.CheckpointError, match="outside the checkpoint"):
        surgeon.open(elsewhere)
    ck = surgeon.open(snap)
    ck["layers.0.mlp.down"] = ck["layers.0.mlp.down"] * 1.5
    out = tmp_path / "out"
    ck.save(out)
    for name in names:
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(out)
    want = surgeon.open(src)["layers.0.mlp.down"] * 1.5
    assert torch.allclose(model.model.layers[0].mlp.down_proj.weight.float(), want.to(model.dtype).float())
    if any(n.startswith("tokenizer") for n in names):
        AutoTokenizer.from_pretrained(out)
    assert all((snap / n).is_symlink() for n in names)  # the snapshot is untouched


def test_materialized_view_hard_links_even_when_tmp_is_another_filesystem(tmp_path, tiny, monkeypatch):
    """With /tmp on tmpfs, a view of staged edits must not copy every shard into RAM."""
    import os
    import tempfile

    from reshard import reshard

    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to stand in for a tmpfs /tmp")
    monkeypatch.setattr(tempfile, "tempdir", shm)
    src = reshard(tiny("llama"), tmp_path / "in" / "ckpt", 2)
    ck = surgeon.open(src)
    ck["layers.0.mlp.down"] = ck["layers.0.mlp.down"] * 2
    touched = ck.entries["model.layers.0.mlp.down_proj.weight"].file
    (other,) = [f for f in ck.shards if f != touched]
    with ck.materialized() as view:
        assert view.parent.parent == src.parent  # beside the input, on its filesystem
        assert (view / other).stat().st_ino == (src / other).stat().st_ino
    assert sorted(p.name for p in src.parent.iterdir()) == ["ckpt"]  # and cleaned up
