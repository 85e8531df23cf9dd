"""Runtime placement: a model squeezed onto disk, or cut to its first layers, gives the in-memory results.

SmolLM2-135M in float32 is 0.54 GB; ``max_memory={"cpu": "150MB"}`` leaves room
for the (tied) 113 MB embedding and layer 0, so accelerate offloads the other
29 layers and the final norm to disk: each forward reads them
back from the checkpoint's safetensors file. Key covariance, a ROME edit (its
δ optimised by backpropagating through offloaded layers, then synced into the
offloaded copy of ``mlp.down``) and the task metrics must equal the in-memory
run. Same kernels on the same CPU, so the tolerances are tight: relative
Frobenius difference ≤ 1e-6 for C, ≤ 1e-4 for ΔW (Adam steps amplify
last-bit differences), 1e-5 absolute on probabilities and KL.
"""

from __future__ import annotations

import pytest
import torch

import surgeon
from surgeon.edits.covariance import key_covariance
from surgeon.edits.rome import RankOneParams, RankOneRequest, rank_one
from surgeon.edits.steering import extract
from surgeon.runtime import load
from surgeon.study import measure
from surgeon.study.task import Task

SQUEEZE = {"cpu": "150MB"}
REQUEST = RankOneRequest("The Eiffel Tower is located in the city of", "Eiffel Tower", " Rome")
TASK = Task.from_dict({
    "name": "eiffel",
    "efficacy": [{"prompt": "The Eiffel Tower is located in the city of", "target": " Rome", "original": " Paris"}],
    "specificity": [{"prompt": "The Louvre is located in the city of"}],
    "neutral": ["She poured the tea, sat down by the window and read the letter a second time."],
})


def on_disk(rt) -> list[int]:
    """Decoder layers whose weights are offloaded (meta tensors in the module, read back per forward)."""
    return [i for i, lay in enumerate(rt.model.model.layers) if lay.mlp.down_proj.weight.is_meta]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def memory(smollm2):
    return load(surgeon.open(smollm2))


@pytest.fixture(scope="module")
def squeezed(smollm2):
    return load(surgeon.open(smollm2), max_memory=SQUEEZE)


def test_squeezed_model_offloads_most_layers_to_disk_and_gives_the_same_logits(memory, squeezed):
    assert on_disk(squeezed) == list(range(1, 30)) and squeezed.device == torch.device("cpu")
    ids = squeezed.tokenizer("The capital of France is")["input_ids"]
    a, b = squeezed.last_logprobs(ids), memory.last_logprobs(ids)
    assert (a - b).abs().max() <= 1e-5


def test_covariance_offloaded_or_from_three_layers_equals_in_memory(smollm2, memory, squeezed):
    ck = surgeon.open(smollm2)
    kw = dict(tokens=1024, use_cache=False, progress=False)
    full = key_covariance(ck, 2, runtime=memory, **kw).matrix
    assert rel(key_covariance(ck, 2, runtime=squeezed, **kw).matrix, full) <= 1e-6
    short = load(ck, layers=3)
    assert short.num_layers == 3 and len(short.model.model.layers) == 3
    assert rel(key_covariance(ck, 2, runtime=short, **kw).matrix, full) <= 1e-6
    assert rel(key_covariance(ck, 2, **kw).matrix, full) <= 1e-6  # no runtime given: loads 3 layers itself


def test_steering_direction_from_a_shortened_model_equals_the_full_one(memory, smollm2):
    pos, neg = ["I love this, it is wonderful"], ["I hate this, it is awful"]
    short = load(surgeon.open(smollm2), layers=5)
    a, b = extract(short, pos, neg, layer=4), extract(memory, pos, neg, layer=4)
    assert rel(a.direction, b.direction) <= 1e-6


def test_rome_and_measurement_offloaded_equal_in_memory(smollm2):
    params = RankOneParams(steps=5)  # at layer 20 each step backpropagates through 10 offloaded layers
    results, metrics = [], []
    for kw in ({}, {"max_memory": SQUEEZE}):
        ck = surgeon.open(smollm2)
        rt = load(ck, **kw)
        ref = measure.reference(rt, TASK)
        results.append(rank_one(ck, REQUEST, layer=20, covariance="identity", params=params, runtime=rt))
        metrics.append(measure.measure(rt, TASK, ref, generated=False))  # rt holds the edit (rank_one syncs it)
        if kw:  # layer 20's mlp.down is on disk: the edit reached the offloaded copy
            assert 20 in on_disk(rt)
    (mem, off), (m_mem, m_off) = results, metrics
    assert mem.steps == off.steps and rel(off.delta_w, mem.delta_w) <= 1e-4
    assert mem.p_after > 10 * mem.p_before  # the edit did something ...
    assert abs(off.p_after - mem.p_after) <= 1e-5  # ... and the offloaded model measures it alike
    assert m_off.efficacy == m_mem.efficacy and m_off.specificity == m_mem.specificity
    assert abs(m_off.efficacy_p - m_mem.efficacy_p) <= 1e-5 and abs(m_off.kl - m_mem.kl) <= 1e-5


def test_cli_placement_options_reach_every_runtime_but_the_finetune(smollm2, memory, monkeypatch):
    """``surgeon --max-memory … --dtype …`` places the models later commands build (compare's arm
    children inherit it); the fine-tune's runtime opts out and trains in float32, in memory."""
    from click.testing import CliRunner

    from surgeon.cli import main

    for name in ("SURGEON_MAX_MEMORY", "SURGEON_OFFLOAD_FOLDER", "SURGEON_DTYPE"):
        monkeypatch.setenv(name, "")  # restored after the test: the CLI writes os.environ
    res = CliRunner().invoke(main, ["--max-memory", "cpu=150MB", "--dtype", "bfloat16", "inspect", str(smollm2)])
    assert res.exit_code == 0, res.output
    ck = surgeon.open(smollm2)
    placed = load(ck)
    assert placed.model.dtype == torch.bfloat16 and len(on_disk(placed)) >= 10  # 18 of 30 in bf16
    ids = placed.tokenizer(REQUEST.prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        p_placed = torch.softmax(placed.logits(ids, keep=1)[0, -1].float(), -1)
        p_memory = torch.softmax(memory.logits(ids, keep=1)[0, -1].float(), -1)
    assert (p_placed - p_memory).abs().max().item() < 0.02  # bf16 vs float32 weights (SmolLM2 is stored in bf16)
    unplaced = load(ck, from_env=False)
    assert unplaced.model.dtype == torch.float32 and not on_disk(unplaced)
    bad = CliRunner().invoke(main, ["--max-memory", "gpu=1GB", "inspect", str(smollm2)])
    assert bad.exit_code == 2 and "expected DEVICE=AMOUNT" in bad.output
