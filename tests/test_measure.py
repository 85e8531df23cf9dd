"""The metrics give the right numbers on cases whose answer is known (SmolLM2)."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from surgeon.runtime import load
from surgeon.study import measure
from surgeon.study.task import Task

NEUTRAL = [
    "The library opens at nine in the morning and closes at six in the evening on weekdays.",
    "Rain is expected across the north of the country tomorrow, clearing by the afternoon.",
    "She poured the tea, sat down by the window and read the letter a second time.",
]

TASK = Task.from_dict({
    "name": "eiffel",
    "train": [{"prompt": "The Eiffel Tower is located in the city of", "completion": " Rome"}],
    "efficacy": [{"prompt": "The Eiffel Tower is located in the city of", "target": " Rome", "original": " Paris"}],
    "generalisation": [{"prompt": "The Eiffel Tower stands in the city of", "target": " Rome"},
                       {"prompt": "Where is the Eiffel Tower? It is in", "target": " Rome, Italy"}],
    "specificity": [{"prompt": "The capital of Germany is"},
                    {"prompt": "The Louvre is located in the city of", "target": " Rome", "original": " Paris"}],
    "neutral": NEUTRAL,
})


@pytest.fixture(scope="module")
def rt(smollm2):
    return load(smollm2)


@pytest.fixture(scope="module")
def ref(rt):
    return measure.reference(rt, TASK)


def _say_rome(rt, bias):
    """Add ``bias`` to the logit of ' Rome' at every position: a model 'edited' to say Rome."""
    rome = rt.tokenizer(" Rome", add_special_tokens=False)["input_ids"][0]

    def fn(logits):
        out = logits.clone()
        out[..., rome] += bias
        return out

    return rt.patch("lm_head", fn)


def test_identical_model_scores_kl_0_specificity_1_perplexity_ratio_1(rt, ref):
    m = measure.measure(rt, TASK, ref, generated=False)
    assert m.kl == pytest.approx(0.0, abs=1e-7)
    assert m.perplexity_ratio == pytest.approx(1.0, abs=1e-7)
    assert m.specificity == 1.0 and m.neighbourhood == 1.0
    assert m.efficacy == 0.0  # the original says Paris
    assert m.efficacy_p < 0.05
    # a probe without an original answer is compared with the original model's own top-1
    assert m.details["generalisation"][0]["original"] == " Paris"


def test_a_model_made_to_say_rome_has_efficacy_1_and_pays_in_kl(rt, ref):
    with _say_rome(rt, 30.0):
        m = measure.measure(rt, TASK, ref, generated=False)
    assert m.efficacy == 1.0 and m.efficacy_p > 0.9
    assert m.generalisation == 1.0
    assert m.neighbourhood == 0.0  # the Louvre moved to Rome too
    assert m.specificity == 0.0  # every top-1 is now " Rome"
    assert m.kl > 1.0 and m.perplexity_ratio > 2.0


def test_kl_and_perplexity_match_a_direct_computation(rt, ref):
    kl_sum, n, nll, nll0 = 0.0, 0, 0.0, 0.0
    with torch.no_grad():
        for text in NEUTRAL:
            ids = rt.tokenizer(text, return_tensors="pt")["input_ids"]
            p = torch.log_softmax(rt.model(input_ids=ids).logits[0], -1)
            with _say_rome(rt, 3.0):
                q = torch.log_softmax(rt.model(input_ids=ids).logits[0], -1)
            kl_sum += F.kl_div(q, p, log_target=True, reduction="sum").item()
            n += ids.shape[1]
            nll += F.cross_entropy(q[:-1], ids[0, 1:], reduction="sum").item()
            nll0 += F.cross_entropy(p[:-1], ids[0, 1:], reduction="sum").item()
    with _say_rome(rt, 3.0):
        m = measure.measure(rt, TASK, ref, generated=False)
    assert 1e-3 < m.kl < 1.0
    assert m.kl == pytest.approx(kl_sum / n, rel=1e-4)
    n_pred = n - len(NEUTRAL)
    assert m.perplexity_ratio == pytest.approx(math.exp((nll - nll0) / n_pred), rel=1e-4)


def test_multi_token_target_probability_is_the_sequence_probability(rt, ref):
    m = measure.measure(rt, TASK, ref, generated=False)
    row = m.details["generalisation"][1]
    prompt = rt.tokenizer("Where is the Eiffel Tower? It is in")["input_ids"]
    target = rt.tokenizer(" Rome, Italy", add_special_tokens=False)["input_ids"]
    assert len(target) >= 2
    with torch.no_grad():
        logp = torch.log_softmax(rt.model(input_ids=torch.tensor([prompt + target])).logits[0], -1)
    by_hand = sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(target))
    assert row["p_target"] == pytest.approx(math.exp(by_hand), rel=1e-4)
    # the comparison with the one-token original is per token: mean log-prob of the target vs log P(Paris)
    assert row["success"] == (by_hand / len(target) > math.log(row["p_original"]))


def test_spelling_rate_counts_generations_with_the_tasks_rule_set(rt, monkeypatch):
    """Plumbing: generations from the task's prompts go to surgeon.study.spelling.get(rules).score(), with counts."""
    from surgeon.study import generate
    from surgeon.study.spelling import SpellingScore

    seen = {"texts": []}

    class Rules:
        def score(self, texts):
            seen["texts"] += texts
            return SpellingScore(hits=sum("Paris" in t for t in texts), applicable=len(texts))

    fake = types.ModuleType("surgeon.study.spelling")
    fake.get = lambda name: seen.setdefault("name", name) and Rules()
    monkeypatch.setattr(generate, "spelling", fake)
    task = Task.from_dict({"name": "s", "spelling": {"rules": "en_gb", "prompts": ["The capital of France is"],
                                                     "max_new_tokens": 4}})
    ref = measure.reference(rt, task)
    assert seen["name"] == "en_gb" and len(seen["texts"]) == 1
    assert ref.spelling_rate == (1.0 if "Paris" in seen["texts"][0] else 0.0)
    with _say_rome(rt, 30.0):
        m = measure.measure(rt, task, ref)
    assert "Rome" in m.details["spelling"]["generations"][0]
    assert m.spelling == 0.0 and m.counts["spelling"]["k"] == 0 and m.counts["spelling"]["n"] == 1


def test_spelling_rate_uses_the_shipped_rule_sets():
    """The contract with surgeon.spelling: get(name).rate(texts), None when no word is applicable."""
    assert measure.spelling_rate("en_gb", ["The colour of the centre", "The color of the center"]) == 0.5
    assert measure.spelling_rate("en_gb", ["Nothing to respell here."]) is None


def test_large_references_spill_to_disk_with_the_same_numbers(rt, ref, monkeypatch):
    """Gemma-3's 262k vocabulary: the original's distributions go to a temporary file, KL stays exact."""
    monkeypatch.setattr(measure, "SPILL_BYTES", 1)
    spilled = measure.reference(rt, TASK)
    assert isinstance(spilled.neutral_logprobs, measure._Spilled) and len(spilled.neutral_logprobs) == 3
    with _say_rome(rt, 3.0):
        a, b = measure.measure(rt, TASK, ref, generated=False), measure.measure(rt, TASK, spilled, generated=False)
    assert a.kl == b.kl and a.perplexity_ratio == b.perplexity_ratio
