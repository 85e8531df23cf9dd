"""The task file format: what loads, what is refused, and that it round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from surgeon.study.task import Example, Probe, Task, TaskError

ROOT = Path(__file__).resolve().parent.parent
FACTS = ROOT / "examples" / "fact_edit" / "facts.json"

DOC = {
    "name": "eiffel",
    "train": [{"prompt": "The Eiffel Tower is in", "completion": " Rome", "subject": "The Eiffel Tower"},
              {"text": "A raw text to learn from."}, "A bare string is a raw text too."],
    "efficacy": [{"prompt": "The Eiffel Tower is in", "target": " Rome", "original": " Paris"}],
    "generalisation": [{"prompt": "Where is the Eiffel Tower? In", "target": " Rome"}],
    "specificity": ["The capital of Germany is", {"prompt": "The Louvre is in", "target": " Rome", "original": " Paris"}],
    "neutral": ["Some plain text.", "More plain text."],
    "spelling": {"rules": "british", "prompts": ["The colour"]},
    "edit": {"layer": 6},
}


def test_every_field_loads_into_its_dataclass():
    t = Task.from_dict(DOC)
    assert t.train[0] == Example("The Eiffel Tower is in", " Rome", "The Eiffel Tower")
    assert t.train[0].text == "The Eiffel Tower is in Rome"
    assert t.train[1] == Example("", "A raw text to learn from.") and t.train[2].prompt == ""
    assert t.efficacy == [Probe("The Eiffel Tower is in", " Rome", " Paris")]
    assert t.generalisation[0].original is None
    assert t.specificity[0] == Probe("The capital of Germany is")
    assert t.neutral == ["Some plain text.", "More plain text."]
    assert t.spelling["rules"] == "british" and t.edit == {"layer": 6}


def test_to_dict_round_trips(tmp_path):
    t = Task.from_dict(DOC)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(t.to_dict()))
    u = Task.load(p)
    assert (u.train, u.efficacy, u.generalisation, u.specificity, u.neutral, u.spelling, u.edit) == \
        (t.train, t.efficacy, t.generalisation, t.specificity, t.neutral, t.spelling, t.edit)
    assert u.path == p


@pytest.mark.parametrize("change, message", [
    ({"generalization": []}, "unknown field(s) generalization"),
    ({"train": [{"prompt": "A is in", "completion": " B", "subject": "C"}]}, "subject 'C' does not occur"),
    ({"train": [{"prompt": "no completion"}]}, "train[0]: needs prompt+completion or text"),
    ({"efficacy": [{"prompt": "The Eiffel Tower is in"}]}, "efficacy[0]: needs a target"),
    ({"generalisation": [{"prompt": "x", "target": ""}]}, "generalisation[0]: target must be a non-empty string"),
    ({"specificity": [{"target": " Rome"}]}, "specificity[0]: needs a prompt"),
    ({"neutral": [1, 2]}, "neutral must be a list of strings"),
    ({"neutral": {"corpus": "no_such_corpus"}}, "no corpus 'no_such_corpus'"),
    ({"neutral": {"corpus": "neutral_en", "from": "middle"}}, "\"from\" must be \"start\" or \"end\""),
    ({"spelling": {"prompts": []}}, "spelling must be an object with a \"rules\" name"),
    ({"train": {"prompt": "x"}}, "train must be a list"),
    # a misspelt key or value would silently change what is measured
    ({"train": [{"prompt": "A is in", "completion": " B", "subjet": "A"}]}, "train[0]: unknown key(s) subjet"),
    ({"train": [{"text": "t", "weight": 2}]}, "train[0]: unknown key(s) weight"),
    ({"efficacy": [{"prompt": "x", "target": " y", "orignal": " z"}]}, "efficacy[0]: unknown key(s) orignal"),
    ({"neutral": {"corpus": "neutral_en", "txets": 4}}, "neutral: unknown key(s) txets"),
    ({"neutral": {"corpus": "neutral_en", "texts": -3}}, "texts must be a positive integer, got -3"),
    ({"neutral": {"corpus": "neutral_en", "texts": 10000}}, "paragraphs; asked for 10000"),
    ({"spelling": {"rules": "en_us"}}, "spelling: unknown spelling rules 'en_us'; known: en_gb, prereform_ru"),
    ({"spelling": {"rules": "en_gb", "max_tokens": 5}}, "spelling: unknown key(s) max_tokens"),
    ({"spelling": {"rules": "en_gb", "max_new_tokens": 0}}, "max_new_tokens must be a positive integer"),
])
def test_malformed_tasks_fail_with_one_line_naming_the_field(change, message):
    with pytest.raises(TaskError) as e:
        Task.from_dict({**DOC, **change}, Path("bad.json"))
    assert message in str(e.value) and str(e.value).startswith("bad.json") and "\n" not in str(e.value)


def test_unreadable_or_invalid_files_are_task_errors(tmp_path):
    with pytest.raises(TaskError, match="cannot read task file"):
        Task.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"name\": ")
    with pytest.raises(TaskError, match="not valid JSON"):
        Task.load(bad)


def test_shipped_fact_task_has_counterfact_shape():
    t = Task.load(FACTS)
    assert len(t.train) == len(t.efficacy) == 4
    assert all(e.subject and e.subject in e.prompt for e in t.train)
    assert [e.prompt for e in t.train] == [p.prompt for p in t.efficacy]
    assert not {p.prompt for p in t.generalisation} & {e.prompt for e in t.train}  # held apart
    assert sum(1 for p in t.specificity if p.target and p.original) >= 6
    assert len(t.neutral) >= 8


def test_neutral_corpus_paragraphs_from_either_end():
    first = Task.from_dict({"neutral": {"corpus": "neutral_en", "texts": 3}}).neutral
    last = Task.from_dict({"neutral": {"corpus": "neutral_en", "texts": 3, "from": "end"}}).neutral
    assert len(first) == len(last) == 3 and not set(first) & set(last)
    assert all(len(t.split()) > 20 for t in first + last)
