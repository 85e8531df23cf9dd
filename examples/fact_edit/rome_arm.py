"""ROME arm of the fact-edit comparison: one rank-one update of ``layers.{layer}.mlp.down`` per fact.

Reads the facts from the task file's training examples (prompt, subject,
completion) and applies them one after another, each on the weights the
previous one left (sequential ROME, as in the ROME paper's multi-edit
experiments). Run alone with

    surgeon apply examples/fact_edit/rome_arm.py --model M --out OUT --param task=examples/fact_edit/facts.json

``surgeon compare`` passes ``task`` itself. ``KNOBS`` declares what
``surgeon compare --budget N`` searches (``surgeon.study.search``): the layer
and the clamp on ‖δ‖ (ROME's ``clamp_norm_factor``: a smaller clamp, a smaller
update, less collateral damage).
"""

from surgeon.edits.rome import RankOneParams, RankOneRequest, rank_one
from surgeon.runtime import load
from surgeon.study.task import Task

KNOBS = {"layer": ["int", 1, 15], "clamp": ["log", 0.5, 8.0]}


def edit(ck, task, layer=6, covariance="corpus", clamp=4.0):
    facts = [e for e in Task.load(task).train if e.subject]
    if not facts:
        raise ValueError(f"{task}: no training example names a subject; ROME needs one per fact")
    rt = load(ck)  # one model for all facts; rank_one keeps it in sync with each edit
    for e in facts:
        r = rank_one(ck, RankOneRequest(e.prompt, e.subject, e.completion), layer=layer, covariance=covariance,
                     params=RankOneParams(clamp_norm_factor=clamp), runtime=rt)
        print(f"{e.subject} -> {e.completion.strip()}: P {r.p_before:.3f} -> {r.p_after:.3f}, "
              f"|dW|/|W| {r.relative:.4f}, {r.steps} steps, {r.seconds:.1f} s, C {r.covariance}", flush=True)
