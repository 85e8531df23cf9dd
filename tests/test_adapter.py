"""Edits exported as PEFT LoRA adapters reproduce the edited checkpoint when loaded on the original."""

from __future__ import annotations

import json

import pytest
import torch

import surgeon
from surgeon.edits.bake import ablate, bake_additive
from surgeon.export.adapter import AdapterError, export_adapter

TEXTS = ["The museum opens at nine in the morning and closes at five on weekdays.",
         "Water boils at one hundred degrees Celsius at sea level."]


class Peft:
    """One fp32 SmolLM2 base, shared; adapters are loaded into one PeftModel by name (saves a model load each)."""

    def __init__(self, path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = path
        self.tok = AutoTokenizer.from_pretrained(path)
        self.enc = self.tok(TEXTS, return_tensors="pt", padding=True)
        self.mask = self.enc["attention_mask"].bool()
        self.base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.base_logits = self.run(self.base)
        self.peft = None

    @torch.no_grad()
    def run(self, model):
        return model(**self.enc).logits[self.mask].float()

    def load(self, path):
        from transformers import AutoModelForCausalLM

        return self.run(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))

    def adapter(self, path, name):
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, str(path), adapter_name=name)
        else:
            self.peft.load_adapter(str(path), adapter_name=name)
        self.peft.set_adapter(name)
        return self.run(self.peft)


@pytest.fixture(scope="module")
def hf(smollm2):
    return Peft(smollm2)


def _rank_one(ck, key, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = ck[key]
    d = torch.outer(torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g))
    return d * (scale * w.norm() / d.norm())


def test_rank_one_edit_exports_at_rank_one_and_reproduces_the_edit(smollm2, hf, tmp_path):
    ck = surgeon.open(smollm2)
    d = _rank_one(ck, "layers.10.mlp.down", 0.1, seed=0)
    ck["layers.10.mlp.down"] = ck["layers.10.mlp.down"] + d
    ck.save(tmp_path / "edited")
    rep = export_adapter(tmp_path / "edited", smollm2, tmp_path / "adapter")
    [t] = rep.tensors
    assert (t.key, t.module, t.kind, t.rank) == ("layers.10.mlp.down", "model.layers.10.mlp.down_proj", "lora", 1)
    # what rank one leaves is the bf16 rounding of the stored edited tensor: measured residual 0.0165,
    # expected rounding 0.021 (both relative to ‖ΔW‖)
    assert t.residual < 2 * t.rounding and t.residual < 0.03
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["model.layers.10.mlp.down_proj"] and cfg["r"] == cfg["lora_alpha"] == 1
    edited = hf.load(tmp_path / "edited")
    got = hf.adapter(tmp_path / "adapter", "rank_one")
    # the unrounded edit, applied in fp32 to the original weights
    w = hf.base.model.layers[10].mlp.down_proj.weight
    keep = w.detach().clone()
    with torch.no_grad(), hf.peft.disable_adapter():
        w += d
        ideal = hf.run(hf.peft)
        w.copy_(keep)
    moved = (edited - hf.base_logits).abs().max().item()
    err = (got - edited).abs().max().item()
    err_ideal = (got - ideal).abs().max().item()
    # measured: the edit moves logits by 1.04; adapter vs edited checkpoint 0.014, all of it the edited
    # checkpoint's own bf16 rounding: the adapter is within 7e-4 of the unrounded edit, the checkpoint 0.014
    assert moved > 0.5
    assert err < 0.05
    assert err_ideal < 0.005 and err_ideal < (edited - ideal).abs().max().item() / 5


def test_dense_edit_is_truncated_with_the_residual_reported(smollm2, hf, tmp_path):
    """ΔW with singular values σ_i ∝ 2^-i (i < 32): tol=0.05 keeps 5, whose tail is 2^-5 = 0.031."""
    ck = surgeon.open(smollm2)
    g = torch.Generator().manual_seed(1)
    for key in ("layers.5.attn.o", "layers.12.mlp.down"):
        w = ck[key]
        u, _ = torch.linalg.qr(torch.randn(w.shape[0], 32, generator=g))
        v, _ = torch.linalg.qr(torch.randn(w.shape[1], 32, generator=g))
        d = u @ torch.diag(0.5 ** torch.arange(32.0)) @ v.T
        ck[key] = w + d * (0.3 * w.norm() / d.norm())
    ck.save(tmp_path / "edited")
    rep = export_adapter(tmp_path / "edited", smollm2, tmp_path / "tol", tol=0.05)
    capped = export_adapter(tmp_path / "edited", smollm2, tmp_path / "rank2", rank=2)
    for t in rep.tensors:
        assert t.rank == 5 and abs(t.residual - 2 ** -5) < 0.003, t  # measured 0.0318 (tail ⊕ bf16 rounding)
    for t in capped.tensors:
        assert t.rank == 2 and abs(t.residual - 2 ** -2) < 0.003, t  # measured 0.2501
    # the reported residual is what the written factors leave
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "tol" / "adapter_model.safetensors"))
    pre = "base_model.model.model.layers.12.mlp.down_proj."
    delta = surgeon.open(tmp_path / "edited")["layers.12.mlp.down"] - surgeon.open(smollm2)["layers.12.mlp.down"]
    left = delta - sd[pre + "lora_B.weight"] @ sd[pre + "lora_A.weight"]
    t12 = next(t for t in rep.tensors if t.key == "layers.12.mlp.down")
    assert abs(float(left.norm() / delta.norm()) - t12.residual) < 1e-4
    edited = hf.load(tmp_path / "edited")
    err5 = (hf.adapter(tmp_path / "tol", "tol") - edited).abs().max().item()
    err2 = (hf.adapter(tmp_path / "rank2", "rank2") - edited).abs().max().item()
    moved = (edited - hf.base_logits).abs().max().item()
    # measured: the edit moves logits by 5.0; rank 5 misses by 0.068, rank 2 by 0.94
    assert moved > 2
    assert err5 < 0.2 and err2 > 3 * err5


def test_ablation_adapter_ties_embedding_and_head_and_saves_the_norm(smollm2, hf, tmp_path):
    ck = surgeon.open(smollm2)
    ablate(ck, torch.randn(576, generator=torch.Generator().manual_seed(2)), layers=[3, 4], embed=True)
    ck["layers.2.norm.pre_mlp"] = ck["layers.2.norm.pre_mlp"] * 1.1
    ck.save(tmp_path / "edited")
    rep = export_adapter(tmp_path / "edited", smollm2, tmp_path / "adapter")
    kinds = {t.key: (t.kind, t.rank) for t in rep.tensors}
    assert kinds == {"embed": ("lora", 1), "lm_head": ("lora", 1), "layers.2.norm.pre_mlp": ("modules_to_save", None),
                     **{f"layers.{i}.{r}": ("lora", 1) for i in (3, 4) for r in ("attn.o", "mlp.down")}}
    assert rep.modules_to_save == ["model.layers.2.post_attention_layernorm"]
    edited = hf.load(tmp_path / "edited")
    got = hf.adapter(tmp_path / "adapter", "ablation")
    moved = (edited - hf.base_logits).abs().max().item()
    err = (got - edited).abs().max().item()
    # measured: moves 2.84, adapter misses by 0.20 — the bf16 rounding of the ablated embedding, whose
    # ΔE is small beside E (expected rounding 0.059 of ‖ΔE‖), exactly as in the rank-one test
    assert moved > 1
    assert err < 0.1 * moved
    emb = next(t for t in rep.tensors if t.key == "embed")
    assert emb.residual < 2 * emb.rounding


def test_baked_steering_bias_exports_as_lora_bias(smollm2, hf, tmp_path):
    ck = surgeon.open(smollm2)
    v = torch.randn(576, generator=torch.Generator().manual_seed(3))
    bake_additive(ck, v / v.norm() * 20, layer=9)
    ck.save(tmp_path / "edited")
    rep = export_adapter(tmp_path / "edited", smollm2, tmp_path / "adapter")
    assert rep.lora_bias and rep.config_changes == {"mlp_bias": [False, True]}
    by_kind = {}
    for t in rep.tensors:
        by_kind.setdefault(t.kind, []).append(t.key)
    assert by_kind == {"bias": ["layers.9.mlp.down.bias"], "noop": by_kind["noop"]} and len(by_kind["noop"]) == 89
    edited = hf.load(tmp_path / "edited")
    got = hf.adapter(tmp_path / "adapter", "steer")
    assert (edited - hf.base_logits).abs().max() > 1
    assert (got - edited).abs().max() < 1e-3  # the bias is carried exactly (bf16 value in an fp32 tensor)


def test_what_lora_cannot_say_is_refused_or_listed(tiny, tmp_path):
    src = tiny("llama", tie_word_embeddings=True)
    ck = surgeon.open(src)
    ck.set("embed", torch.cat([ck["embed"], torch.zeros(4, 64)]), resize=True)
    ck.config["vocab_size"] = 260
    ck["layers.0.attn.o"] = ck["layers.0.attn.o"] * 1.5
    ck.save(tmp_path / "edited", check_tokenizer=False)
    with pytest.raises(AdapterError,
                       match=r"embed \(model.embed_tokens.weight\): shape changed \[256, 64\] -> \[260, 64\]"):
        export_adapter(tmp_path / "edited", src, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    rep = export_adapter(tmp_path / "edited", src, tmp_path / "adapter", allow_skip=True)
    skipped = {t.key: t.reason for t in rep.skipped}
    assert set(skipped) == {"embed", "config.vocab_size"}
    assert "cannot change the base config" in skipped["config.vocab_size"]
    [lora] = [t for t in rep.tensors if t.kind == "lora"]
    assert lora.key == "layers.0.attn.o" and lora.rank == 64  # W·0.5 is full rank (fp32: nothing is rounding)
    report = json.loads((tmp_path / "adapter" / "surgeon_adapter.json").read_text())
    assert {t["key"] for t in report["tensors"] if t["kind"] == "skipped"} == set(skipped)


def test_conv1d_family_exports_with_fan_in_fan_out(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src = tiny("gpt2")
    ck = surgeon.open(src)
    ck["layers.1.mlp.down"] = ck["layers.1.mlp.down"] + _rank_one(ck, "layers.1.mlp.down", 0.5, seed=4)
    ck.save(tmp_path / "edited")
    rep = export_adapter(tmp_path / "edited", src, tmp_path / "adapter")
    assert [(t.module, t.rank) for t in rep.tensors] == [("transformer.h.1.mlp.c_proj", 1)]
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        edited = AutoModelForCausalLM.from_pretrained(tmp_path / "edited")(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(src)
        plain = base(input_ids=ids).logits
        got = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))(input_ids=ids).logits
    assert (edited - plain).abs().max() > 1e-2
    assert (got - edited).abs().max() < 1e-5  # fp32 tiny checkpoint: exact


def test_cli_export_adapter(tiny, tmp_path):
    from click.testing import CliRunner

    from surgeon.cli import main

    src = tiny("llama")
    ck = surgeon.open(src)
    ck["layers.1.mlp.down"] = ck["layers.1.mlp.down"] + _rank_one(ck, "layers.1.mlp.down", 0.2, seed=6)
    ck.save(tmp_path / "edited")
    res = CliRunner().invoke(main, ["export-adapter", str(tmp_path / "edited"), "--base", str(src),
                                    "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "layers.1.mlp.down" in res.output and "rank 1" in res.output
    assert ((tmp_path / "a" / "adapter_model.safetensors").is_file()
            and (tmp_path / "a" / "adapter_config.json").is_file())
    res = CliRunner().invoke(main, ["export-adapter", str(tmp_path / "edited"), "--base", str(src),
                                    "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "already exists" in res.output


def test_exactly_stored_low_rank_edit_exports_at_its_rank(tiny, tmp_path):
    """Zeroing heads stores exact zeros (no rounding): the default rank must still be the edit's own
    rank (heads × head_dim), not the full rank with twice the tensor's parameters."""
    from surgeon.edits import zero_heads

    src = tiny("llama")
    ck = surgeon.open(src)
    head_dim = ck.config["hidden_size"] // ck.config["num_attention_heads"]
    zero_heads(ck, 0, [1])
    ck.save(tmp_path / "edited")
    rep = export_adapter(tmp_path / "edited", src, tmp_path / "adapter")
    (row,) = rep.tensors
    assert row.rank == head_dim and row.residual < 1e-5, (row.rank, row.residual)
