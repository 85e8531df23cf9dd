"""compare's ingredients and locate on the real Gemma-3-270M (262k vocabulary, tied head,
sandwich norms, scaled embedding), reduced to a few probes so they fit CI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import surgeon
from surgeon.runtime import load
from surgeon.study import measure
from surgeon.study.locate import locate
from surgeon.study.task import Task

FULL = json.loads((Path(__file__).parent.parent / "examples" / "prereform_orthography" / "task.json")
                  .read_text(encoding="utf-8"))
TASK = Task.from_dict({
    "name": "prereform-small",
    "train": FULL["train"][:2],
    "efficacy": FULL["efficacy"][:2],
    "generalisation": FULL["generalisation"][:1],
    "specificity": FULL["specificity"][:2],
    "neutral": {**FULL["neutral"], "texts": 2},
    "spelling": {**FULL["spelling"], "prompts": FULL["spelling"]["prompts"][:1], "max_new_tokens": 8},
})


@pytest.fixture(scope="module")
def original(gemma3):
    return load(gemma3)


def test_metrics_on_gemma3_see_no_change_in_the_original_and_a_change_in_an_edit(gemma3, original):
    ref = measure.reference(original, TASK)
    assert ref.vocab_size == 262144
    same = measure.measure(original, TASK, ref, generated=False)
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.perplexity_ratio == pytest.approx(1.0, abs=1e-5)
    assert same.specificity == 1.0 and same.spelling == ref.spelling_rate
    ck = surgeon.open(gemma3)
    # not mlp.down or mlp.up: Gemma-3 normalises the MLP output (norm.post_mlp), so scaling a
    # linear path changes nothing; the gate goes through GELU, so scaling it does
    ck["layers.8.mlp.gate"] = ck["layers.8.mlp.gate"] * 3.0
    changed = measure.measure(load(ck), TASK, ref, generated=False)
    assert changed.kl > 1e-3 and math.isfinite(changed.perplexity_ratio) and changed.perplexity_ratio != 1.0


def test_locate_on_gemma3_scores_every_layer_and_role_and_suggests_a_range(original):
    r = locate(original, TASK, method="both", examples=1)
    assert r.num_layers == 18 and r.patch_mode == "contrast"
    assert len(r.grad) == 18 and all(len(row) == len(r.roles) for row in r.grad)
    assert all(v >= 0 and math.isfinite(v) for row in r.grad for v in row) and r.grad_total > 0
    assert len(r.patch) == 18 and all(math.isfinite(v) for row in r.patch for v in row)
    lo, hi = r.suggested
    assert 0 <= lo <= hi < 18
