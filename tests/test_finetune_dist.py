"""The fine-tune on two processes (torchrun, FSDP2, gloo on CPU) gives the single process's tensors.

Same seed, same data: the 2-process run takes rows 0::2 and 1::2 of every
batch and FSDP averages the gradients, so the merged tensors must equal the
single-process ones up to float32 summation order. Tolerance: 1e-5 absolute
on every changed tensor of a float32 tiny model (measured: ~2e-7).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from alive import Alive
from click.testing import CliRunner

from surgeon.io.checkpoint import open_checkpoint
from surgeon.io.values import Deferred
from surgeon.study.config import FinetuneConfig, FinetuneError
from surgeon.study.finetune import finetune
from surgeon.study.finetune_dist import release_heap_every
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
    per_rank = [n for n in two.notes if n.startswith("peak RSS per rank (MB): ")]
    assert len(per_rank) == 1 and len(per_rank[0].split(": ")[1].split(", ")) == 2
    assert any("input embeddings move" in n for n in two.notes)
    assert "each rank read its own rows of every tensor from the files" in two.notes  # nobody held the whole model


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


@pytest.mark.parametrize("nproc", [1, 2])
def test_the_merge_holds_one_trained_tensor_at_a_time_and_the_delta_files_last_until_then(
        tiny, tmp_path, monkeypatch, nproc):
    """LoRA on every projection of both layers: 14 trained tensors, staged deferred (the checkpoint holds
    none), made one at a time while staging and at most two at once while saving (hash and writer threads);
    the delta files stay until the staged values go."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the delta folder lands here
    alive, make = Alive(), Deferred.materialize
    monkeypatch.setattr(Deferred, "materialize", lambda self: alive.track(make(self)))  # float32 model: copyable
    r = finetune(tiny("llama"), TASK, FinetuneConfig(nproc=nproc, roles="attn,mlp", rank=4, steps=2, batch=4,
                                                     lr=1e-2), progress=False)
    ck = r.ck
    assert len(ck.changed) == 14 and all(isinstance(v, Deferred) for v in ck.staged.values())
    assert alive.now == 0 and alive.made >= 14 and alive.peak == 1
    (folder,) = tmp_path.glob("surgeon-*")
    assert len(list(folder.glob("delta-*.safetensors"))) == 14
    alive.peak = alive.made = 0
    ck.save(tmp_path / "out")
    assert alive.made >= 2 * 14 and alive.now == 0
    assert alive.peak <= 2, f"{alive.peak} trained tensors alive at once during the save"
    saved = open_checkpoint(tmp_path / "out")
    assert all(torch.equal(saved.stored(name), ck.stored(name)) for name in ck.changed)
    assert folder.is_dir()
    ck.reset()
    assert not folder.exists()  # the last value that read from it is gone


def test_every_rank_builds_the_model_on_the_meta_device_with_real_buffers(tiny):
    """Each rank reads its own rows, so it starts from the same modules, shapes, dtypes and attention implementation
    as a loaded model, with no weights, and with the buffers the files do not hold (rotary tables, Gemma's
    embedding scale) computed as from_pretrained computes them."""
    from surgeon.runtime import load
    from surgeon.study.finetune_dist import _parameters_are_tensors, _skeleton

    for path in (tiny("llama", tie_word_embeddings=True), tiny("gemma3_text")):
        ck = open_checkpoint(path)
        bare, loaded = _skeleton(ck).model, load(ck, from_env=False).model
        assert {p.device.type for p in bare.parameters()} == {"meta"} and _parameters_are_tensors(bare, ck)
        assert bare.lm_head.weight is bare.model.embed_tokens.weight  # tied as in the loaded model
        for mine, theirs in ((bare.named_parameters(), loaded.named_parameters()),
                             (bare.named_buffers(), loaded.named_buffers())):
            assert {n: (t.shape, t.dtype) for n, t in mine} == {n: (t.shape, t.dtype) for n, t in theirs}
        theirs = dict(loaded.named_buffers())
        assert all(torch.equal(b, theirs[n]) for n, b in bare.named_buffers())
        assert bare.config._attn_implementation == loaded.config._attn_implementation


def test_fused_experts_fall_back_to_rank_0_sending_the_shards(tiny):
    """transformers fuses Mixtral's experts on loading, so its parameters are not the files' tensors: rank 0 loads
    and sends, and two processes still equal one."""
    path = tiny("mixtral")
    one, two = run_both(path, method="lora", roles="attn", rank=4, steps=3, batch=4, lr=1e-2)
    a, b = changed(one), changed(two)
    assert set(a) == set(b) and len(a) == 2 * 4
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= TOL, name
    assert any(n.startswith("rank 0 loaded the whole model") for n in two.notes)


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


def test_a_failed_torchrun_is_reported_by_its_root_cause(tmp_path):
    """No rank wrote an error file (it died before Python could): the one line is torchrun's root-cause summary."""
    from surgeon.study.finetune_dist import _cause

    log = tmp_path / "log.txt"
    log.write_text("W1206 rank 1 starting\n" + "=" * 54 + "\nsurgeon.study.finetune_dist FAILED\n" + "-" * 54 +
                   "\nFailures:\n  <NO_OTHER_FAILURES>\n" + "-" * 54 + "\nRoot Cause (first observed failure):\n[0]:\n"
                   "  time      : 2026-12-06_12:00:00\n  host      : box\n  rank      : 1 (local_rank: 1)\n"
                   "  exitcode  : -9 (pid: 4242)\n  error_file: <N/A>\n"
                   "  traceback : Signal 9 (SIGKILL) received by PID 4242\n" + "=" * 54 + "\n")
    assert _cause(log) == ("rank 1 (local_rank: 1); exitcode -9 (pid: 4242); "
                           "traceback Signal 9 (SIGKILL) received by PID 4242")
    log.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "RuntimeError: Connection reset by peer\n" + "=" * 54 + "\n")
    assert _cause(log) == "RuntimeError: Connection reset by peer"


def test_a_launch_that_dies_outside_the_ranks_runs_once_more_and_says_so(tiny, monkeypatch):
    import subprocess

    import surgeon.study.finetune_dist as fd

    real, calls = subprocess.run, []

    def dies_once(cmd, **kw):
        calls.append(cmd)
        if len(calls) > 1:
            return real(cmd, **kw)
        kw["stdout"].write(b"Root Cause (first observed failure):\n[0]:\n  rank      : 0 (local_rank: 0)\n"
                           b"  exitcode  : -11 (pid: 7)\n  traceback : Signal 11 (SIGSEGV) received by PID 7\n")
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(fd.subprocess, "run", dies_once)
    run = finetune(tiny("llama"), TASK, FinetuneConfig(nproc=2, layers="0", roles="attn.q", steps=2, batch=4),
                   progress=False)
    assert len(calls) == 2 and run.ck.changed == ["model.layers.0.self_attn.q_proj.weight"]
    assert run.notes[0].startswith("torchrun failed before any rank raised (exit 1: rank 0 (local_rank: 0); "
                                   "exitcode -11 (pid: 7); traceback Signal 11 (SIGSEGV)")


def test_a_rank_that_raised_is_not_run_again(tiny, monkeypatch):
    import subprocess

    import surgeon.study.finetune_dist as fd

    calls = []

    def raises(cmd, **kw):
        calls.append(cmd)
        (Path(cmd[-1]) / "error-1.txt").write_text("rank 1: ValueError: the data is wrong")
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(fd.subprocess, "run", raises)
    with pytest.raises(FinetuneError, match=r"torchrun exit 1\): rank 1: ValueError: the data is wrong$"):
        finetune(tiny("llama"), TASK, FinetuneConfig(nproc=2, steps=1, batch=4), progress=False)
    assert len(calls) == 1


def test_the_heap_is_trimmed_before_every_chosen_layer_in_forward_and_in_backward():
    """On CPU each rank returns freed pages every few layers; here with a counting stand-in for malloc_trim."""
    layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(7))
    calls = []
    # the stand-in returns an int as malloc_trim does (a gradient hook must not pass it on); layers 0, 3, 6
    assert release_heap_every(layers, 3, trim=lambda: calls.append(1) or 1) == 3
    x = torch.randn(2, 4)
    for layer in layers:
        x = layer(x)
    assert len(calls) == 3  # forward: before layers 0, 3 and 6
    x.sum().backward()
    assert len(calls) == 6  # backward: as each chosen layer's backward starts
    with torch.no_grad():  # no gradient, no backward hook
        layers[0](torch.randn(1, 4))
    assert len(calls) == 7
