"""The map's word-swap and number-comparison tasks (issue 11): real task files with honest splits.

Each must load, keep train / validation / test apart, hold at least 40 test
probes, and measure what its builder says: the word-swap probes are prompts
where the base model writes the original word, the number questions are
answered Yes or No by the base model.
"""

import json
import re
from pathlib import Path

import pytest

from surgeon.runtime import load
from surgeon.study.arms import parse_arm
from surgeon.study.task import Task

ROOT = Path(__file__).resolve().parent.parent
WORD_SWAP = ROOT / "examples" / "word_swap" / "task.json"
NUMBERS = ROOT / "examples" / "number_compare" / "task.json"
TASKS = [WORD_SWAP, NUMBERS]


@pytest.fixture(scope="module")
def base(smollm2):
    return load(smollm2)


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.parent.name)
def test_task_loads_with_40_test_probes_and_a_map_entry(path):
    task = Task.load(path)
    val = task.split("validation")
    assert len(task.generalisation) >= 40, len(task.generalisation)
    assert len(val.generalisation) >= 20 and task.train and task.neutral and val.neutral
    assert task.map["advice_arm"] in {parse_arm(a).name for a in task.map["arms"]}
    assert 3 <= len(task.map["arms"]) <= 5


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.parent.name)
def test_train_validation_and_test_prompts_are_disjoint(path):
    task = Task.load(path)
    val = task.split("validation")
    train = {e.prompt for e in task.train}
    test, held = {p.prompt for p in task.generalisation}, {p.prompt for p in val.generalisation}
    assert not (train & test) and not (train & held) and not (test & held)
    assert not (set(task.neutral) & set(val.neutral))
    assert {p.prompt for p in task.efficacy} <= train  # efficacy probes are the prompts trained on


def test_number_pairs_never_cross_splits():
    """A pair {A, B} of the test split is asked neither way round, nor in either relation, in training."""
    task = Task.load(NUMBERS)

    def pairs(prompts):
        return {frozenset(map(int, re.findall(r"\d+", p))) for p in prompts}

    train = pairs(e.prompt for e in task.train)
    test = pairs(p.prompt for p in task.generalisation)
    val = pairs(p.prompt for p in task.split("validation").generalisation)
    assert not (train & test) and not (train & val) and not (test & val)
    answers = [p.target for p in task.generalisation]
    assert answers.count(" Yes") == answers.count(" No")  # a constant answer scores one half


def test_word_swap_words_are_single_tokens_and_pairs_cover_the_probes(base):
    doc = json.loads(WORD_SWAP.read_text(encoding="utf-8"))
    pairs = doc["edit"]["pairs"]
    for word in list(pairs) + list(pairs.values()):
        assert len(base.tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    for p in Task.load(WORD_SWAP).generalisation:
        assert pairs[p.original.strip()] == p.target.strip()


def test_base_model_writes_the_recorded_original_word(base):
    """The builder kept only prompts whose greedy next word is the original: check a few, test and validation."""
    task = Task.load(WORD_SWAP)
    for p in task.generalisation[::15] + task.split("validation").generalisation[::15]:
        got = base.generate(p.prompt, max_new_tokens=2)
        assert re.match(r"\s*(\w+)", got).group(1) == p.original.strip(), (p.prompt[-60:], got)


def test_base_model_answers_number_questions_yes_or_no(base):
    """The format elicits an answer word from the base model, so generated success reads the model's choice."""
    task = Task.load(NUMBERS)
    for p in task.generalisation[:4]:
        assert base.generate(p.prompt, max_new_tokens=2).split()[0].strip(".,") in ("Yes", "No")
