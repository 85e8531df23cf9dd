"""Row-range reads and writes: ``ck.get(key, rows=...)`` and ``ck.set_rows(key, start, rows)``.

On the real SmolLM2 and tiny families, row reads and row edits give exactly what
whole-tensor reads and edits give (fused parts, Conv1D and interleaved views
included), and save() writes only the staged rows' bytes. On a synthetic
checkpoint with a Llama-3-sized 128256 × 4096 bf16 embedding (1.05 GB), a child
process edits 4096 rows in place and then appends 256 rows, saving each time,
and its peak RSS (``VmHWM``) stays under 0.5 GB, while reading the embedding
whole breaks that bound (the control); bytes outside the edited rows are identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import surgeon
from surgeon.errors import EditError
from surgeon.io.shards import read_header, sha256_range, write_shard

MB = 1 << 20
VOCAB, HIDDEN = 128256, 4096
RSS_CAP_MB = 512


# ------------------------------------------------------------------ semantics on real and tiny models


def test_row_reads_equal_slices_of_the_whole_tensor(smollm2, tiny):
    ck = surgeon.open(smollm2)
    assert torch.equal(ck.get("embed", rows=slice(100, 164)), ck.get("embed")[100:164])
    assert torch.equal(ck.get("embed", dtype=None, rows=slice(-3, None)), ck.get("embed", dtype=None)[-3:])
    assert ck.get("embed", rows=slice(5, 5)).shape == (0, 576)
    for family, key in (("phi3", "layers.0.attn.k"), ("gpt2", "layers.0.mlp.down"), ("gpt_neox", "layers.1.attn.v")):
        ck = surgeon.open(tiny(family))
        assert torch.equal(ck.get(key, rows=slice(3, 11)), ck.get(key)[3:11]), family
    with pytest.raises(EditError, match="step 1"):
        ck.get("embed", rows=slice(0, 10, 2))


def test_set_rows_equals_the_whole_tensor_edit_and_saves_only_those_bytes(smollm2, tmp_path):
    a, b = surgeon.open(smollm2), surgeon.open(smollm2)
    rows = a.get("embed", rows=slice(1000, 1100)) * 1.5
    a.set_rows("embed", 1000, rows)
    a.set_rows("embed", 1050, rows[:10] * -1)  # a later patch overlapping an earlier one wins
    whole = b.get("embed")
    whole[1000:1100] = rows
    whole[1050:1060] = rows[:10] * -1
    b["embed"] = whole
    assert "model.embed_tokens.weight" not in a.staged and a.changed == b.changed == ["model.embed_tokens.weight"]
    assert torch.equal(a.get("embed", rows=slice(990, 1110)), b.get("embed")[990:1110])
    assert torch.equal(a.get("lm_head"), b.get("lm_head"))  # tied: the head reads the patched rows
    ma, mb = a.save(tmp_path / "a"), b.save(tmp_path / "b")
    assert ma["files"]["patched"] == mb["files"]["patched"] == ["model.safetensors"]
    ta, tb = ma["tensors"][0], mb["tensors"][0]
    assert ta["new_sha256"] == tb["new_sha256"] and ta["rows_patched"] == [[1000, 1050], [1050, 1060], [1060, 1100]]
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


def test_set_rows_on_a_part_a_staged_tensor_and_a_transposed_view(tiny, tmp_path):
    ck = surgeon.open(tiny("phi3"))  # k is rows 64..96 of the fused qkv tensor
    k = ck.get("layers.0.attn.k")
    ck.set_rows("layers.0.attn.k", 4, torch.ones(2, 64))
    k[4:6] = 1
    assert torch.equal(ck.get("layers.0.attn.k"), k)
    assert list(ck.patches) == ["model.layers.0.self_attn.qkv_proj.weight"]
    with pytest.raises(EditError, match="run past"):
        ck.set_rows("layers.0.attn.k", 31, torch.ones(2, 64))
    ck["layers.0.attn.q"] = ck["layers.0.attn.q"] * 2  # whole-tensor staging supersedes the rows, keeping them
    assert not ck.patches and torch.equal(ck.get("layers.0.attn.k"), k)
    ck.set_rows("layers.0.attn.k", 0, torch.zeros(1, 64))  # now staged whole: written into the staged value
    k[0] = 0
    assert torch.equal(ck.get("layers.0.attn.k"), k) and not ck.patches
    g = surgeon.open(tiny("gpt2"))  # Conv1D: (out, in) rows are columns on disk
    down = g.get("layers.0.mlp.down")
    g.set_rows("layers.0.mlp.down", 2, torch.full((3, 256), 0.5))
    down[2:5] = 0.5
    assert torch.equal(g.get("layers.0.mlp.down"), down)
    g.save(tmp_path / "g")
    assert torch.equal(surgeon.open(tmp_path / "g").get("layers.0.mlp.down"), down)


def test_appended_rows_grow_the_tensor_and_the_shard_is_rewritten(smollm2, tmp_path):
    ck = surgeon.open(smollm2)
    new = ck.get("embed", rows=slice(0, 3)) + 1
    ck.set_rows("embed", 49152, new)
    ck.set_rows("embed", 49153, new[:1] * 0)  # overwrite an appended row
    assert ck.shape("embed") == ck.shape("lm_head") == (49155, 576)
    with pytest.raises(EditError, match="outside"):
        ck.set_rows("embed", 49156, new)  # a gap after the last row
    ck.config["vocab_size"] = 49155
    m = ck.save(tmp_path / "out", check_tokenizer=False)
    assert m["files"]["rewritten"] == ["model.safetensors"]
    out = surgeon.open(tmp_path / "out")
    want = torch.cat([ck.get("embed", rows=slice(0, 49152)), new[:1], new[:1] * 0, new[2:]]).to(torch.bfloat16)
    assert torch.equal(out.get("embed", dtype=None), want)
    e_in, e_out = ck.entries["model.embed_tokens.weight"], out.entries["model.embed_tokens.weight"]
    for name, e in ck.entries.items():  # every other tensor copied byte for byte
        if name != e_in.name:
            o = out.entries[name]
            old = sha256_range(str(ck.path / e.file), e.start, e.end)
            assert old == sha256_range(str(out.path / o.file), o.start, o.end)
    assert sha256_range(str(ck.path / e_in.file), e_in.start, e_in.end) == \
        sha256_range(str(out.path / e_out.file), e_out.start, e_out.start + e_in.nbytes)


# ------------------------------------------------------------------ memory on a 128k × 4k embedding

HARNESS = r"""
import json, sys
import torch
import surgeon, surgeon.io.save
def hwm_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
src, out, mode = sys.argv[1:4]
ck = surgeon.open(src)
torch.ones(8).to(torch.bfloat16).float()  # touch the kernels' code pages before the baseline
base = hwm_mb()
if mode == "whole":  # control: the embedding read as stored, as a whole-tensor edit would
    t = ck.get("embed", dtype=None)
    print(json.dumps({"peak_mb": hwm_mb(), "rows": t.shape[0]}))
    sys.exit()
rows = ck.get("embed", rows=slice(60000, 64096))  # 4096 rows: 32 MB bf16, 64 MB float32
ck.set_rows("embed", 60000, rows * 1.01)
del rows
ck.save(out + "/patched")
ck.set_rows("embed", 128256, ck.get("embed", rows=slice(0, 256)) * -1)  # vocabulary growth: 256 rows
ck.config["vocab_size"] = 128512
ck.save(out + "/grown")
print(json.dumps({"peak_mb": hwm_mb(), "base_mb": base}))
"""


@pytest.fixture(scope="module")
def big_embed(tmp_path_factory) -> Path:
    """A tied Llama-3-vocabulary checkpoint: embed 128256 × 4096 bf16 (1.05 GB), written streamed."""
    root = tmp_path_factory.mktemp("rows") / "embed-128k"
    root.mkdir()
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=HIDDEN, intermediate_size=64,
               num_hidden_layers=0, num_attention_heads=32, num_key_value_heads=8, vocab_size=VOCAB,
               tie_word_embeddings=True, torch_dtype="bfloat16")
    (root / "config.json").write_text(json.dumps(cfg))
    block = (torch.randn(1009, HIDDEN, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)

    def rows():  # 1009-row blocks (a prime: no period divides the edit offsets), one 8 MB piece at a time
        for s in range(0, VOCAB, 1009):
            yield block[: min(1009, VOCAB - s)]

    norm = torch.ones(HIDDEN, dtype=torch.bfloat16)
    write_shard(root / "model.safetensors", [("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN), rows()),
                                            ("model.norm.weight", "BF16", (HIDDEN,), norm)], {"format": "pt"})
    return root


def _child(src: Path, out: Path, mode: str) -> dict:
    env = {**os.environ, "SURGEON_THREADS": "1", "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    res = subprocess.run([sys.executable, "-c", HARNESS, str(src), str(out), mode],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_row_edits_of_a_128k_embedding_stay_under_half_a_gigabyte(big_embed, tmp_path):
    r = _child(big_embed, tmp_path, "rows")
    control = _child(big_embed, tmp_path, "whole")
    print(f"\nrow edit + patching save + 256-row growth + rewrite: peak RSS {r['peak_mb']:.0f} MB "
          f"(interpreter + torch {r['base_mb']:.0f} MB) "
          f"(cap {RSS_CAP_MB}); whole read: {control['peak_mb']:.0f} MB")
    assert r["peak_mb"] <= RSS_CAP_MB < control["peak_mb"]

    src = big_embed / "model.safetensors"
    e = next(x for x in read_header(str(src), "m").entries if x.name == "model.embed_tokens.weight")
    row = HIDDEN * 2
    a, b = e.start + 60000 * row, e.start + 64096 * row
    patched = tmp_path / "patched/model.safetensors"
    assert src.stat().st_size == patched.stat().st_size
    assert sha256_range(str(src), 0, a) == sha256_range(str(patched), 0, a)
    assert sha256_range(str(src), b, src.stat().st_size) == sha256_range(str(patched), b, src.stat().st_size)
    old, new = surgeon.open(big_embed), surgeon.open(tmp_path / "patched")
    want = (old.get("embed", rows=slice(60000, 64096)) * 1.01).to(torch.bfloat16)
    assert torch.equal(new.get("embed", dtype=None, rows=slice(60000, 64096)), want)

    grown = surgeon.open(tmp_path / "grown")
    g = grown.entries["model.embed_tokens.weight"]
    assert g.shape == (VOCAB + 256, HIDDEN)
    gfile = str(tmp_path / "grown/model.safetensors")
    assert sha256_range(gfile, g.start, g.start + (a - e.start)) == sha256_range(str(src), e.start, a)
    assert sha256_range(gfile, g.start + (b - e.start), g.start + e.nbytes) == sha256_range(str(src), b, e.end)
    assert torch.equal(grown.get("embed", dtype=None, rows=slice(60000, 64096)), want)
    assert torch.equal(grown.get("embed", rows=slice(VOCAB, None)), -old.get("embed", rows=slice(0, 256)))
    assert torch.equal(grown.get("final_norm"), old.get("final_norm"))
