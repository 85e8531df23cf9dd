"""The task file format: what loads, what is refused, and that it round-trips."""

from __future__ import annotations

import json
import re
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
    "specificity": ["The capital of Germany is",
                    {"prompt": "The Louvre is in", "target": " Rome", "original": " Paris"}],
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
    ({"spelling": {"rules": "en_us"}}, "spelling: unknown spelling rules 'en_us'; known: archaic_en, en_gb, "
     "misspell_en, prereform_ru"),
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


def test_json_syntax_error_names_line_and_column_and_keeps_the_whole_message(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "name": "t",\n  "train": [{"prompt": "a" "target": "b"}]\n}\n')
    with pytest.raises(TaskError) as e:
        Task.load(bad)
    msg = str(e.value)
    assert msg == f"{bad}:3:28: not valid JSON: Expecting ',' delimiter at line 3, column 28", msg


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


VALIDATION = {"generalisation": [{"prompt": "The Eiffel Tower can be found in", "target": " Rome"}],
              "specificity": ["The capital of Spain is"], "neutral": ["Other plain text."],
              "spelling_prompts": ["The harbour"]}


def test_validation_split_holds_its_own_probes_and_shares_training_and_edit():
    t = Task.from_dict({**DOC, "validation": VALIDATION})
    v, test = t.split("validation"), t.split("test")
    assert v.split_name == "validation" and test.split_name == "test" and test.validation is None
    assert v.generalisation == [Probe("The Eiffel Tower can be found in", " Rome")] and v.efficacy == []
    assert v.train == t.train and v.edit == t.edit
    assert v.spelling == {"rules": "british", "prompts": ["The harbour"]}  # the rules come from the task
    assert not v.prompts() & test.prompts()  # nothing measured on validation is a test probe
    assert test.prompts() >= {"Where is the Eiffel Tower? In", "The capital of Germany is", "The colour"}


def test_validation_round_trips_and_old_files_without_it_still_load(tmp_path):
    t = Task.from_dict({**DOC, "validation": VALIDATION})
    again = Task.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again.split("validation").prompts() == t.split("validation").prompts()
    old = Task.from_dict(DOC)
    assert old.validation is None and old.split("test").prompts() == t.split("test").prompts()
    with pytest.raises(TaskError, match="no validation split"):
        old.split("validation")


@pytest.mark.parametrize("change, message", [
    ({"generalisation": [{"prompt": "Where is the Eiffel Tower? In", "target": " Rome"}]}, "also test probes"),
    ({"neutral": ["Some plain text."]}, "also test probes"),
    ({"spelling_prompts": ["The colour"]}, "also test probes"),
    ({"paraphrases": []}, "validation: unknown key(s) paraphrases"),
])
def test_validation_that_overlaps_the_test_split_or_is_malformed_is_refused(change, message):
    with pytest.raises(TaskError, match=re.escape(message)):
        Task.from_dict({**DOC, "validation": {**VALIDATION, **change}}, Path("bad.json"))


def test_shipped_tasks_have_a_validation_split_apart_from_test():
    for path in (FACTS, ROOT / "examples/spelling/task.json", ROOT / "examples/prereform_orthography/task.json"):
        t = Task.load(path)
        v = t.split("validation")
        assert len(v.generalisation) >= 8 and v.specificity and v.neutral, path
        assert not v.prompts() & t.split("test").prompts()
        assert len(t.generalisation) >= (11 if path == FACTS else 40)


def test_neutral_skip_takes_the_paragraphs_before_the_last_ones():
    last20 = Task.from_dict({"neutral": {"corpus": "neutral_en", "texts": 20, "from": "end"}}).neutral
    val = Task.from_dict({"neutral": {"corpus": "neutral_en", "texts": 4, "from": "end", "skip": 16}}).neutral
    first = Task.from_dict({"neutral": {"corpus": "neutral_en", "texts": 2, "skip": 3}}).neutral
    assert val == last20[:4]
    assert first == Task.from_dict({"neutral": {"corpus": "neutral_en", "texts": 5}}).neutral[3:]
