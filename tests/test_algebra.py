"""Tensor algebra: exact endpoints, layer-exact transplants, head removal seen in the runtime, named errors."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import surgeon
from surgeon.edits.algebra import add, interpolate, scale, select, transplant, zero_heads
from surgeon.errors import EditError
from surgeon.io.diff import diff
from surgeon.runtime import load

TEXT = ["The old lighthouse keeper climbed the stairs every evening to light the lamp."]


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def scaled(smollm2, tmp_path_factory):
    """SmolLM2 with every tensor × 1.5 (a donor of identical shapes and dtypes)."""
    ck = surgeon.open(smollm2)
    scale(ck, None, 1.5)
    out = tmp_path_factory.mktemp("scaled") / "ckpt"
    ck.save(out)
    return out


def test_interpolate_endpoints_are_byte_identical(smollm2, scaled, tmp_path):
    ck = surgeon.open(smollm2)
    interpolate(ck, scaled, 0.0)
    assert ck.changed == []
    ck.save(tmp_path / "t0")
    assert _sha(tmp_path / "t0" / "model.safetensors") == _sha(smollm2 / "model.safetensors")

    ck = surgeon.open(smollm2)
    sel = interpolate(ck, scaled, 1.0)
    assert len(sel) == 272
    ck.save(tmp_path / "t1")
    assert _sha(tmp_path / "t1" / "model.safetensors") == _sha(scaled / "model.safetensors")


def test_interpolate_selection_midpoint(smollm2, scaled):
    ck = surgeon.open(smollm2)
    sel = interpolate(ck, scaled, 0.5, keys=["mlp.down"], layers=[3, 4])
    assert sel == ["layers.3.mlp.down", "layers.4.mlp.down"]
    assert ck.changed == ["model.layers.3.mlp.down_proj.weight", "model.layers.4.mlp.down_proj.weight"]
    orig, donor = surgeon.open(smollm2), surgeon.open(scaled)
    for k in sel:
        want = (0.5 * orig[k] + 0.5 * donor[k]).bfloat16().float()  # computed in fp32, rounded once to bf16
        assert torch.equal(ck[k], want)
        torch.testing.assert_close(ck[k], 1.25 * orig[k], rtol=2**-7, atol=0)


def test_transplant_layer_3_changes_exactly_layer_3(smollm2, scaled, tmp_path):
    ck = surgeon.open(smollm2)
    sel = transplant(ck, scaled, layers=3)
    assert len(sel) == 9  # q k v o gate up down + two norms
    donor = surgeon.open(scaled)
    for k in sel:
        assert torch.equal(ck.get(k, dtype=None), donor.get(k, dtype=None))
    ck.save(tmp_path / "out")
    changed = [r for r in diff(smollm2, tmp_path / "out") if r.changed]
    assert {r.layer for r in changed} == {3} and len(changed) == 9
    assert all(r.relative == pytest.approx(0.5, abs=2e-3) for r in changed)  # 1.5 W vs W, up to bf16 rounding

    ck = surgeon.open(smollm2)
    transplant(ck, smollm2, layers=5, from_layer=3)  # a layer from another position of the same model
    orig = surgeon.open(smollm2)
    assert torch.equal(ck["layers.5.attn.q"], orig["layers.3.attn.q"])
    assert not torch.equal(ck["layers.5.attn.q"], orig["layers.5.attn.q"])


def test_add_delta_tensor_or_other_checkpoint(smollm2, scaled):
    ck = surgeon.open(smollm2)
    w, w_donor = ck["layers.2.attn.v"], surgeon.open(scaled)["layers.2.attn.v"]
    add(ck, "layers.2.attn.v", scaled, alpha=-1.0)  # W - 1.5 W: a task vector subtracted
    assert torch.equal(ck["layers.2.attn.v"], (w - w_donor).bfloat16().float())
    torch.testing.assert_close(ck["layers.2.attn.v"], -0.5 * w, rtol=0.02, atol=0)  # donor was rounded to bf16
    delta = torch.zeros_like(ck["layers.2.mlp.up"])
    delta[0, 0] = 1.0
    add(ck, "layers.2.mlp.up", delta)
    assert ck["layers.2.mlp.up"][0, 0] == (surgeon.open(smollm2)["layers.2.mlp.up"][0, 0] + 1).bfloat16().float()
    assert [e["kind"] for e in ck.edits] == ["add", "add"]


def test_zeroing_heads_removes_exactly_their_output(smollm2):
    """All 9 heads of layer 0 -> attention output 0; head 4 of layer 2 -> same logits as ablating its z_h."""
    ck = surgeon.open(smollm2)
    zero_heads(ck, 0, range(9))
    zero_heads(ck, 2, [4])
    edited = load(ck)
    with torch.no_grad(), edited.capture(["layers.0.attn"]) as acts:
        new_logits = edited.forward(TEXT)
    assert acts["layers.0.attn"].abs().max() == 0  # SmolLM2's o_proj has no bias
    del edited

    orig = load(smollm2)
    hd = 64

    def drop_all(z):
        return torch.zeros_like(z)

    def drop_head_4(z):
        z = z.clone()
        z[..., 4 * hd : 5 * hd] = 0
        return z

    with torch.no_grad():
        base = orig.forward(TEXT)
        with orig.patch("layers.0.attn.o.input", drop_all), orig.patch("layers.2.attn.o.input", drop_head_4):
            ablated = orig.forward(TEXT)
    assert (base - ablated).abs().max() > 1.0  # the heads mattered
    torch.testing.assert_close(new_logits, ablated, rtol=0, atol=2e-4)


def test_zero_heads_through_conv1d_keeps_o_bias(tiny, smollm2, tmp_path):
    d = tmp_path / "gpt2"
    shutil.copytree(tiny("gpt2", vocab_size=49152), d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2 / f, d / f)
    ck = surgeon.open(d)
    before = ck.get("layers.0.attn.o", dtype=None).clone()
    zero_heads(ck, 0, [0, 1, 2, 3])
    stored = ck.stored("transformer.h.0.attn.c_proj.weight")  # Conv1D: (in, out) on disk
    assert stored.abs().max() == 0 and before.abs().max() > 0
    rt = load(ck)
    with torch.no_grad(), rt.capture(["layers.0.attn"]) as acts:
        rt.forward(TEXT)
    bias = ck["layers.0.attn.o.bias"]
    torch.testing.assert_close(acts["layers.0.attn"], bias.expand_as(acts["layers.0.attn"]))

    ck = surgeon.open(d)
    zero_heads(ck, 1, [2])  # one head: exactly its 16 input columns
    w, w0 = ck["layers.1.attn.o"], surgeon.open(d)["layers.1.attn.o"]
    assert torch.equal((w != w0).any(0).nonzero().flatten(), torch.arange(32, 48))


def test_fused_part_selection_touches_only_its_rows(tiny):
    ck = surgeon.open(tiny("gpt2"))
    assert select(ck, ["attn.qkv", "attn.q"], layers=[1]) == ["layers.1.attn.qkv"]  # part of a selected whole
    before = ck["layers.1.attn.qkv"]
    scale(ck, "attn.q", 2.0, layers=[1])
    after = ck["layers.1.attn.qkv"]
    assert torch.equal(after[:64], 2 * before[:64]) and torch.equal(after[64:], before[64:])


def test_errors_name_the_tensor(tiny, tmp_path):
    base = tiny("llama")
    ck = surgeon.open(base)
    with pytest.raises(EditError, match=r"layers\.0\.mlp\.(down|gate|up): shape \(\d+, \d+\) in \S*ckpt but"):
        transplant(ck, tiny("llama", intermediate_size=96), layers=0)
    with pytest.raises(EditError, match=r"layers\.1\.\S+: 'layers\.1\.\S+' not in"):
        transplant(ck, tiny("llama", num_hidden_layers=1), layers=1)
    half = tmp_path / "bf16"
    half.mkdir()
    shutil.copy(base / "config.json", half / "config.json")
    save_file({k: v.bfloat16() for k, v in load_file(base / "model.safetensors").items()}, half / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(EditError, match=r"embed: dtype torch.float32 in \S*ckpt but torch.bfloat16 in \S*bf16"):
        interpolate(ck, half, 0.5, keys=["embed"])
    with pytest.raises(EditError, match=r"layers\.0\.attn\.o: heads \[4\] out of range 0\.\.3"):
        zero_heads(ck, 0, [1, 4])
    with pytest.raises(EditError, match=r"layers\.0\.mlp\.up: delta shape \(3, 3\) does not match \(128, 64\)"):
        add(ck, "layers.0.mlp.up", torch.zeros(3, 3))
    with pytest.raises(EditError, match="must be finite"):
        scale(ck, "embed", float("nan"))
    with pytest.raises(EditError, match="matches no tensor"):
        scale(ck, "mlp.down", 2.0, layers=[7])
    assert ck.changed == [] and ck.edits == []  # every check ran before anything was staged
    assert json.loads((base / "config.json").read_text())["num_hidden_layers"] == 2


@pytest.mark.parametrize("script, params, changed", [
    ("scale_layer.py", {"layer": 3, "factor": 1.01}, 1),
    ("transplant_layer.py", {"layer": 3}, 9),
    ("interpolate.py", {"t": 0.5, "layers": [3]}, 9),
    ("zero_heads.py", {"layer": 0, "heads": [0, 1]}, 1),
])
def test_examples_run_on_smollm2(smollm2, script, params, changed):
    from pathlib import Path

    from surgeon.edits.apply import apply

    plan = apply(Path(__file__).parent.parent / "examples" / script, smollm2, dry_run=True, params=params)
    assert len(plan["tensors"]) == changed and plan["edits"]
    if script == "zero_heads.py":
        assert plan["tensors"][0]["key"] == "layers.0.attn.o" and plan["tensors"][0]["rank"] == 128  # 2 heads × 64
