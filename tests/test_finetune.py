"""Fine-tuning chosen layers × roles moves the target and writes only those tensors (SmolLM2, few steps)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from surgeon.io.checkpoint import open_checkpoint
from surgeon.study.config import FinetuneConfig, FinetuneError, parse_layers
from surgeon.study.finetune import finetune
from surgeon.study.task import Task
from surgeon.study.train import batches, encode, target_keys

PROMPT = "The Eiffel Tower is located in the city of"
TASK = Task.from_dict({
    "name": "eiffel",
    "train": [{"prompt": PROMPT, "completion": " Rome"},
              {"prompt": "The Eiffel Tower stands in", "completion": " Rome"}],
})


def p_rome(path) -> float:
    """P(' Rome' | PROMPT) from a plain transformers load: no flags, no surgeon."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        p = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    return p[tok(" Rome", add_special_tokens=False)["input_ids"][0]].item()


@pytest.fixture(scope="module")
def p_before(smollm2):
    return p_rome(smollm2)


def test_lora_on_two_layers_moves_p_target_and_writes_only_those_tensors(smollm2, tmp_path, p_before):
    out = tmp_path / "lora"
    r = finetune(smollm2, TASK, FinetuneConfig(method="lora", layers="0-1", roles="attn,norm.pre_mlp", rank=8,
                                               steps=6, lr=5e-3), out=out, progress=False)
    keys = {t["key"] for t in r.manifest["tensors"]}
    want = {f"layers.{i}.{role}" for i in (0, 1) for role in ("attn.q", "attn.k", "attn.v", "attn.o", "norm.pre_mlp")}
    assert keys == want
    # LoRA A and B for q (576->576), k and v (576->192), o (576->576), rank 8; norms trained in full
    assert r.trainable_params == 2 * 8 * (1152 + 768 + 768 + 1152) + 2 * 576
    assert r.losses[-1] < r.losses[0] / 2
    assert r.update_kept > 0.5
    assert r.tokens == 6 * (11 + 7) and r.tokens_per_s > 0 and r.peak_rss_mb > 100
    after = p_rome(out)
    assert p_before < 0.05 and after > 0.3, (p_before, after)
    src = r.manifest["source"]
    assert src["kind"] == "finetune" and src["finetune"]["config"]["layers"] == [0, 1]
    assert r.manifest["edits"][0]["kind"] == "finetune"


def test_cli_full_finetune_of_one_mlp_down_with_ftl_bound(smollm2, tmp_path, p_before):
    from surgeon.cli import main

    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(TASK.to_dict()))
    out = tmp_path / "full"
    res = CliRunner().invoke(main, ["finetune", str(task_file), "--model", str(smollm2), "--out", str(out),
                                    "--method", "full", "--layers", "3", "--roles", "mlp.down", "--steps", "6",
                                    "--lr", "2e-3", "--max-delta", "4e-3", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output[res.output.index("{"):])
    assert r["targets"] == ["layers.3.mlp.down"] and r["trainable_params"] == 576 * 1536
    manifest = json.loads((out / "surgeon.json").read_text())
    assert [t["name"] for t in manifest["tensors"]] == ["model.layers.3.mlp.down_proj.weight"]
    before, after = open_checkpoint(smollm2)["layers.3.mlp.down"], open_checkpoint(out)["layers.3.mlp.down"]
    step = after.abs() * 2.0 ** -8  # bf16 rounding of the saved weight (at most half a unit in its last place)
    assert ((after - before).abs() <= 4e-3 + step + 1e-9).all()  # FT-L: L∞ bound held
    assert (after != before).sum() > 0.5 * before.numel()
    assert p_rome(out) > 2 * p_before


def test_lora_on_tied_lm_head_changes_the_shared_embedding_and_says_so(smollm2, tmp_path, p_before):
    out = tmp_path / "head"
    r = finetune(smollm2, TASK, FinetuneConfig(method="lora", roles="lm_head", rank=4, steps=5, lr=1e-2),
                 out=out, progress=False)
    assert r.targets == ["lm_head"]
    assert [t["name"] for t in r.manifest["tensors"]] == ["model.embed_tokens.weight"]
    assert any("input embeddings move" in n for n in r.notes)
    assert p_rome(out) > 0.3


def test_roles_expand_from_the_role_table(tiny):
    llama = open_checkpoint(tiny("llama"))
    assert target_keys(llama, [1], ["attn"]) == [f"layers.1.attn.{x}" for x in "qkvo"]
    assert target_keys(llama, [0], ["mlp", "lm_head"]) == ["layers.0.mlp.gate", "layers.0.mlp.up",
                                                          "layers.0.mlp.down", "lm_head"]
    gemma = open_checkpoint(tiny("gemma3_text"))
    assert sorted(target_keys(gemma, [0], ["norm"])) == [f"layers.0.norm.{x}" for x in
                                                        ("post_attn", "post_mlp", "pre_attn", "pre_mlp")]
    gpt2 = open_checkpoint(tiny("gpt2"))
    assert target_keys(gpt2, [0], ["attn"]) == ["layers.0.attn.o", "layers.0.attn.qkv"]
    with pytest.raises(FinetuneError, match="part of the fused attn.qkv"):
        target_keys(gpt2, [0], ["attn.q"])
    with pytest.raises(FinetuneError, match="not a role of llama"):
        target_keys(llama, [0], ["mlp.dwon"])
    assert parse_layers("0-2,5", 30) == [0, 1, 2, 5] and parse_layers("all", 3) == [0, 1, 2]
    with pytest.raises(FinetuneError, match="layer 30 does not exist"):
        parse_layers("28-30", 30)
    with pytest.raises(FinetuneError, match="max_delta"):
        FinetuneConfig(method="lora", max_delta=1e-3).resolved(30)


def test_loss_covers_completion_tokens_only(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    task = Task.from_dict({"train": [{"prompt": PROMPT, "completion": " Rome, Italy"}, {"text": "Plain text here."}]})
    rows = encode(tok, task, max_length=64)
    _, attn, label = next(batches(rows, batch=2, steps=1, seed=0, pad=tok.pad_token_id))
    n_prompt = len(tok(PROMPT)["input_ids"])
    n_comp = len(tok(" Rome, Italy", add_special_tokens=False)["input_ids"])
    raw = len(tok("Plain text here.")["input_ids"])
    by_len = {int(a.sum()): lab for a, lab in zip(attn, label)}
    assert by_len[n_prompt + n_comp].nonzero().flatten().tolist() == list(range(n_prompt, n_prompt + n_comp))
    assert by_len[raw].nonzero().flatten().tolist() == list(range(1, raw))  # every token after the first
    # a long prompt is cut from the left; the completion survives whole
    short = encode(tok, task, max_length=5)[0]
    assert len(short[0]) == 5 and short[0][short[1]:] == tok(" Rome, Italy", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("copy", [False, True])
def test_untouched_shards_are_linked_or_with_copy_copied(tiny, tmp_path, copy):
    """A fine-tune saves through the same writer as an edit: shards it did not change are
    hard links to the input (or independent copies with --copy), byte-identical either way."""
    from reshard import reshard

    from surgeon.cli import main

    src = reshard(tiny("llama"), tmp_path / "in", 2)
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(TASK.to_dict()))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["finetune", str(task_file), "--model", str(src), "--out", str(out),
                                    "--method", "full", "--layers", "0", "--roles", "mlp.down", "--steps", "1",
                                    "--json"] + (["--copy"] if copy else []))
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "surgeon.json").read_text())
    changed = {open_checkpoint(src).entries[t["name"]].file for t in manifest["tensors"]}
    untouched = [p.name for p in src.glob("*.safetensors") if p.name not in changed]
    assert len(changed) == 1 and len(untouched) == 1
    for name in untouched:
        assert (out / name).read_bytes() == (src / name).read_bytes()
        assert (out / name).stat().st_nlink == (1 if copy else 2)


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1"], "lr -1.0: must be positive"),
    (["--alpha", "0"], "alpha 0.0: must be positive"),
    (["--max-length", "1"], "max_length 1: an example needs at least 2 tokens"),
    (["--layers", "99"], "layer 99 does not exist"),
    (["--roles", "nonsense"], "role 'nonsense': not a role of llama"),
])
def test_cli_refuses_bad_settings_in_one_line_before_training(tiny, tmp_path, args, message):
    from surgeon.cli import main

    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(TASK.to_dict()))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["finetune", str(task_file), "--model", str(tiny("llama")), "--out", str(out)]
                             + args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert "internal error" not in res.output and not out.exists()


def test_examples_cut_to_max_length_are_noted(tiny):
    cfg = FinetuneConfig(method="full", layers="0", roles="mlp.down", steps=1, max_length=8)
    r = finetune(tiny("llama"), TASK, cfg, progress=False)
    assert any("were longer than max_length 8 and were cut" in n for n in r.notes), r.notes
    r = finetune(tiny("llama"), TASK, FinetuneConfig(method="full", layers="0", roles="mlp.down", steps=1),
                 progress=False)
    assert not any("max_length" in n for n in r.notes), r.notes
