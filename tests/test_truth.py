"""Truth tests on the real models: what surgeon writes is what transformers loads.

open -> save with no change: every tensor byte-identical, logits identical.
open -> scale layers.3.mlp.down by 1.01 -> save: only the shard holding it
differs, the reloaded logits move, and the manifest names exactly that tensor.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from safetensors import safe_open

import surgeon


def _sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_hashes(d):
    return {p.name: _sha(p) for p in sorted(d.iterdir()) if p.is_file()}


def _logits(path, texts=("The capital of Germany is", "Привет, как дела? Сегодня")):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(**tok(t, return_tensors="pt")).logits[0] for t in texts]


@pytest.fixture(scope="module")
def smollm2_sharded(smollm2, tmp_path_factory):
    """SmolLM2 re-saved by transformers into several shards with an index."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sharded") / "smollm2"
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="60MB")
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(out)
    assert (out / "model.safetensors.index.json").exists()
    return out


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_save_without_changes_is_byte_identical_and_loads_to_the_same_logits(model, request, tmp_path):
    src = request.getfixturevalue(model)
    before = _tree_hashes(src)
    ck = surgeon.open(src)
    doc = ck.save(tmp_path / "out")
    out = tmp_path / "out"
    assert doc["tensors"] == []
    assert doc["files"]["linked"] == ["model.safetensors"]
    assert os.stat(out / "model.safetensors").st_ino == os.stat(src / "model.safetensors").st_ino
    with safe_open(src / "model.safetensors", "pt") as a, safe_open(out / "model.safetensors", "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
    for la, lb in zip(_logits(src), _logits(out)):
        assert torch.equal(la, lb)
    assert _tree_hashes(src) == before  # the input is never modified


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_scaling_one_tensor_changes_only_that_tensor_and_the_logits(model, request, tmp_path):
    src = request.getfixturevalue(model)
    before = _tree_hashes(src)
    ck = surgeon.open(src)
    w = ck["layers.3.mlp.down"]
    ck["layers.3.mlp.down"] = w * 1.01
    doc = ck.save(tmp_path / "out")
    out = tmp_path / "out"
    name = "model.layers.3.mlp.down_proj.weight"
    assert [t["name"] for t in doc["tensors"]] == [name]
    assert doc["tensors"][0]["key"] == "layers.3.mlp.down" and doc["tensors"][0]["role"] == "mlp.down"
    manifest = json.loads((out / "surgeon.json").read_text())
    assert manifest["tensors"][0]["new_sha256"] != manifest["tensors"][0]["old_sha256"]
    with safe_open(src / "model.safetensors", "pt") as a, safe_open(out / "model.safetensors", "pt") as b:
        for k in a.keys():
            same = torch.equal(a.get_tensor(k), b.get_tensor(k))
            assert same == (k != name), k
        new = b.get_tensor(name)
        assert new.dtype == torch.bfloat16
        assert torch.equal(new, (w * 1.01).to(torch.bfloat16))
    moved = [(la - lb).abs().max().item() for la, lb in zip(_logits(src), _logits(out))]
    assert all(m > 1e-4 for m in moved), moved
    assert _tree_hashes(src) == before


def test_sharded_edit_rewrites_only_the_shard_that_holds_the_tensor(smollm2_sharded, tmp_path):
    src = smollm2_sharded
    before = _tree_hashes(src)
    ck = surgeon.open(src)
    assert len(ck.shards) >= 3
    ck["layers.3.mlp.down"] = ck["layers.3.mlp.down"] * 1.01
    doc = ck.save(tmp_path / "out")
    out = tmp_path / "out"
    holder = ck.entries["model.layers.3.mlp.down_proj.weight"].file
    assert doc["files"]["patched"] == [holder]
    after = _tree_hashes(out)
    for rel in ck.shards:
        assert (after[rel] == before[rel]) == (rel != holder), rel
        if rel != holder:  # untouched shards are hard links, never copies
            assert os.stat(out / rel).st_ino == os.stat(src / rel).st_ino
    assert after["model.safetensors.index.json"] == before["model.safetensors.index.json"]
    reopened = surgeon.open(out)
    assert torch.equal(reopened["layers.3.mlp.down"],
                       (ck.original("model.layers.3.mlp.down_proj.weight").float() * 1.01).bfloat16().float())
    _logits(out)  # loads in transformers with no flags
    assert _tree_hashes(src) == before


def test_copy_mode_writes_independent_files(smollm2, tmp_path):
    ck = surgeon.open(smollm2)
    doc = ck.save(tmp_path / "out", copy=True)
    assert doc["files"]["copied"] == ["model.safetensors"]
    assert os.stat(tmp_path / "out" / "model.safetensors").st_ino != os.stat(smollm2 / "model.safetensors").st_ino
    assert _sha(tmp_path / "out" / "model.safetensors") == _sha(smollm2 / "model.safetensors")
