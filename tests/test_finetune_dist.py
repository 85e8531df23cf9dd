"""The fine-tune on two processes (torchrun, FSDP2, gloo on CPU) gives the single process's tensors.

Same seed, same data: the 2-process run takes rows 0::2 and 1::2 of every
batch and FSDP averages the gradients, so the merged tensors must equal the
single-process ones up to float32 summation order. Tolerance: 1e-5 absolute
on every changed tensor of a float32 tiny model (measured: ~2e-7).
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from surgeon.io.checkpoint import open_checkpoint
from surgeon.study.config import FinetuneConfig, FinetuneError
from surgeon.study.finetune import finetune
from surgeon.study.task import Task

TOL = 1e-5
TASK = Task.from_dict({"name": "items", "train": [
    {"prompt": f"Item {i} is", "completion": f" thing {i % 3}"} for i in range(8)]})


def changed(r) -> dict[str, torch.Tensor]:
    return {name: r.ck.stored(name).float() for name in r.ck.changed}


def run_both(path, **cfg):
    one = finetune(path, TASK, FinetuneConfig(nproc=1, **cfg), progress=False)
    two = finetune(path, TASK, FinetuneConfig(nproc=2, **cfg), progress=False)
    return one, two


def test_two_process_lora_on_tied_head_equals_one_process(tiny):
    """LoRA on every projection, norms in full, and an adapter on a tied lm_head (the shared matrix)."""
    path = tiny("llama", tie_word_embeddings=True)
    one, two = run_both(path, method="lora", roles="attn,mlp,norm,lm_head", rank=4, steps=4, batch=4, lr=1e-2)
    a, b = changed(one), changed(two)
    assert set(a) == set(b) and "model.embed_tokens.weight" in a  # the tied head lands in the embedding
    assert len(a) == 2 * (4 + 3 + 2) + 1  # 2 layers × (q k v o, gate up down, two norms) + the shared matrix
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= TOL, name
    assert one.trainable_params == two.trainable_params and one.params_changed == two.params_changed > 0
    assert two.losses == pytest.approx(one.losses, abs=1e-5) and two.losses[-1] < two.losses[0]
    assert two.tokens == one.tokens and two.peak_rss_mb > 0
    assert any("input embeddings move" in n for n in two.notes)


def test_two_process_ftl_keeps_its_bound_and_equals_one_process(tiny):
    path = tiny("llama")
    one, two = run_both(path, method="full", layers="1", roles="mlp,lm_head", steps=3, batch=4, lr=1e-2,
                        max_delta=2e-3)
    a, b = changed(one), changed(two)
    assert set(a) == set(b) == {"model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
                                "model.layers.1.mlp.down_proj.weight", "lm_head.weight"}
    start = open_checkpoint(path)
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= TOL, name
        assert (b[name] - start.stored(name).float()).abs().max().item() <= 2e-3 + 1e-6, name  # FT-L's L∞ bound


def test_cli_nproc_saves_a_checkpoint_with_its_manifest(tiny, tmp_path):
    from surgeon.cli import main

    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(TASK.to_dict()))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["finetune", str(task_file), "--model", str(tiny("llama")), "--out", str(out),
                                    "--layers", "0", "--roles", "attn.q", "--steps", "2", "--batch", "4",
                                    "--nproc", "2", "--json"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "surgeon.json").read_text())
    assert [t["name"] for t in manifest["tensors"]] == ["model.layers.0.self_attn.q_proj.weight"]
    assert manifest["source"]["finetune"]["config"]["nproc"] == 2


def test_nproc_refuses_staged_changes_and_too_few_rows(tiny, tmp_path):
    ck = open_checkpoint(tiny("llama"))
    ck["layers.0.mlp.down"] = ck["layers.0.mlp.down"] * 1.01
    with pytest.raises(FinetuneError, match="staged changes .*save them first"):
        finetune(ck, TASK, FinetuneConfig(nproc=2, steps=1), progress=False)
    with pytest.raises(FinetuneError, match="fewer rows per step than the 2 processes"):
        finetune(tiny("llama"), Task.from_dict({"name": "one", "train": TASK.to_dict()["train"][:1]}),
                 FinetuneConfig(nproc=2, steps=1), progress=False)
    with pytest.raises(FinetuneError, match="nproc 9: between 1 and batch"):
        finetune(tiny("llama"), TASK, FinetuneConfig(nproc=9, batch=8), progress=False)
    assert not (tmp_path / "out").exists()
