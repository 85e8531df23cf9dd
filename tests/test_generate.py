"""What the model writes: generated success, degeneration, fluency and Wilson intervals."""

from __future__ import annotations

import math

import pytest

from surgeon.edits.rome import RankOneRequest, rank_one
from surgeon.io.checkpoint import open_checkpoint
from surgeon.runtime import load
from surgeon.study import measure
from surgeon.study.generate import Rate, degeneration, fluency, ngram_entropy, says, spelling_counts, wilson
from surgeon.study.task import Probe, Task


def test_wilson_interval_matches_the_closed_form_and_never_leaves_0_1():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)  # the textbook value for 0/10
    lo, hi = wilson(7, 11)
    assert lo == pytest.approx(0.3538, abs=1e-3) and hi == pytest.approx(0.8483, abs=1e-3)
    assert wilson(1, 1)[1] == 1.0 and wilson(0, 0) is None
    r = Rate(3, 4) + Rate(1, 4)
    assert r.to_dict()["k"] == 4 and r.rate == 0.5 and r.to_dict()["lo"] < 0.5 < r.to_dict()["hi"]


@pytest.mark.parametrize("text, why", [
    (" Он былъъъъ дома", "character run"),
    (" Мы пошли въ лѣсъ ъ и тамъ", "lone mark"),
    (" был домъь", "doubled sign"),
    (" The tower is in Rome. The tower is in Rome. The tower", "repeats"),
    (" Paris Paris Paris Paris", "repeats"),
    (" Ahhhhh", "character run"),
])
def test_degeneration_names_runs_lone_marks_and_repeated_phrases(text, why):
    assert why in degeneration(text)


@pytest.mark.parametrize("text", [
    " Paris, France, and is a symbol of the city.",
    " Въ нашемъ городѣ есть старый домъ, гдѣ жилъ мой дѣдъ.",
    " The committee will meet on Tuesday; the committee chair will speak first.",
])
def test_ordinary_text_is_not_degenerate(text):
    assert degeneration(text) is None


def test_ngram_entropy_is_romes_weighted_mean_of_bigram_and_trigram_entropy():
    # "a b a b": bigrams (a b) x2, (b a) x1 -> H2; trigrams (a b a), (b a b) -> H3 = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    looping = fluency(["the cat the cat the cat the cat the cat"])
    varied = fluency(["the cat sat on a mat while dogs ran past the old gate"])
    assert looping < varied


def test_answers_count_as_whole_words():
    assert says(" Rome, Italy.", " Rome") and not says(" Romeo and Juliet", " Rome")
    assert says(" in New York City", " New York") and not says(" Paris", " ")


def test_spelling_counts_score_words_and_count_degenerate_text_as_misses():
    rate, bad = spelling_counts("en_gb", ["The colour of the centre.", "The color of the colourrrr"])
    assert bad.k == 1 and bad.n == 2
    assert rate.k == 2 and rate.n > 2  # the degenerate text's words are misses, not hits


# ----------------------------------------------------------------- on the real model

EIFFEL = Task.from_dict({
    "name": "eiffel",
    "efficacy": [{"prompt": "The Eiffel Tower is located in the city of", "target": " Rome", "original": " Paris"}],
    "generalisation": [{"prompt": "Where is the Eiffel Tower? It is in", "target": " Rome", "original": " Paris"}],
    "specificity": [{"prompt": "The Louvre is located in the city of", "target": " Rome", "original": " Paris"}],
    "neutral": ["The library opens at nine in the morning and closes at six in the evening on weekdays."],
})


@pytest.fixture(scope="module")
def before_after(smollm2):
    """SmolLM2 before and after the known ROME edit Eiffel Tower -> Rome (layer 6), with the reference."""
    rt0 = load(smollm2)
    ref = measure.reference(rt0, EIFFEL)
    before = measure.measure(rt0, EIFFEL, ref)
    ck = open_checkpoint(smollm2)
    rt = load(ck)
    rank_one(ck, RankOneRequest("The Eiffel Tower is located in the city of", "The Eiffel Tower", " Rome"), layer=6,
             runtime=rt)
    return before, measure.measure(rt, EIFFEL, ref), rt


def test_generated_success_agrees_with_the_hand_checked_eiffel_edit(before_after):
    """Checked by hand: the original writes " Paris, France." for both prompts, the edited model
    " Rome, Italy..." — and the Louvre stays in Paris."""
    before, after, _ = before_after
    assert [r["generated"].startswith(" Paris") for r in before.details["efficacy_gen"]] == [True]
    assert before.efficacy_gen == 0.0 and before.generalisation_gen == 0.0 and before.neighbourhood_gen == 1.0
    assert after.details["efficacy_gen"][0]["generated"].startswith(" Rome")
    assert after.details["generalisation_gen"][0]["generated"].startswith(" Rome")
    assert after.efficacy_gen == 1.0 and after.generalisation_gen == 1.0
    assert after.details["neighbourhood_gen"][0]["generated"].startswith(" Paris") and after.neighbourhood_gen == 1.0
    assert after.counts["generalisation_gen"]["n"] == 1 and after.counts["generalisation_gen"]["lo"] < 1.0
    assert after.degenerate == 0.0 and after.fluency == pytest.approx(before.fluency, abs=1.0)


def test_a_generation_that_does_not_write_the_whole_target_fails(before_after):
    """Teacher forcing only compares two answers; generated success needs the target written out."""
    *_, rt = before_after
    probe = Probe("The Eiffel Tower is located in the city of", " Rome, Italy, Europe", " Paris")
    g = measure.generated_success(rt, [probe])
    assert g.rows[0]["generated"].startswith(" Rome") and g.rate.k == 0  # " Rome, Italy." lacks ", Europe"


def test_batched_greedy_writes_what_one_prompt_at_a_time_writes(before_after):
    """Left padding (positions follow the mask) leaves the greedy text of prompts of unequal length as it is
    alone: the batched form the fact scorers use and the one-at-a-time form the task measurement uses agree."""
    *_, rt = before_after
    prompts = ["The Eiffel Tower is located in the city of", "Paris is", "The capital of Italy is",
               "Once upon a time, in a small village by the sea, there lived"]
    alone = rt.generate(prompts, 12)
    assert alone == [rt.generate(p, 12) for p in prompts] and alone[0].startswith(" Rome")
    assert rt.generate(prompts, 12, batch_size=4) == alone
    assert isinstance(rt.generate(prompts[1], 3), str)
