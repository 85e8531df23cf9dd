"""Spelling conventions as rule sets: convert text, and count how often a text follows them.

A spelling task (pre-1918 Russian orthography, British English, deliberate
misspellings, archaic English) is defined by
rules, not by a list of examples, so the same rules make the training texts,
the probes, and the score of free generations (:meth:`RuleSet.rate`). Every
rule set maps a word in the *source* convention to the *target* one
(:meth:`RuleSet.convert`) and back (:meth:`RuleSet.source`). A written word
is *counted* when the rules spell it differently in the two conventions
(*applicable*) or when it carries target-convention marks the rules would not
put there (*over-marked*: ``многоъ``, ``ъъъ``, a fine-tune's overshoot); the
rate is the share of counted words written exactly as the rules want. Words
the rules know nothing about and that carry no such marks are not counted, so
the rate measures what the rules define — no more, and no reward for spraying
the marks everywhere.

``get(name)`` returns a rule set (:func:`names` lists them); see
:class:`PrereformRussian`, :class:`BritishEnglish`, :class:`Misspelling` and
:class:`ArchaicEnglish` for what they cover
and, as importantly, what they do not. The base class and the score live in
``base``, each convention in its own module, its word lists as data files
under ``surgeon/data/spelling/``.
"""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

from surgeon.study.spelling.archaic import ArchaicEnglish
from surgeon.study.spelling.base import Change, RuleSet, SpellingError, SpellingScore
from surgeon.study.spelling.en_gb import BritishEnglish
from surgeon.study.spelling.misspell import Misspelling
from surgeon.study.spelling.prereform_ru import PrereformRussian

__all__ = ["ArchaicEnglish", "BritishEnglish", "Change", "Misspelling", "PrereformRussian", "RuleSet", "SpellingError",
           "SpellingScore", "get", "names", "spelling_task"]

_REGISTRY = {"prereform_ru": PrereformRussian, "en_gb": BritishEnglish, "misspell_en": Misspelling,
             "archaic_en": ArchaicEnglish}
_ALIASES = {"prereform": "prereform_ru", "pre1918_ru": "prereform_ru", "british": "en_gb", "en_us_gb": "en_gb",
            "misspell": "misspell_en", "archaic": "archaic_en"}


def get(name: str) -> RuleSet:
    """The rule set called ``name`` (``prereform_ru``, ``en_gb``, ``misspell_en``, ``archaic_en``; one shared
    instance each)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise SpellingError(f"unknown spelling rules {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _instance(key)


@cache
def _instance(key: str) -> RuleSet:
    return _REGISTRY[key]()


def names() -> list[str]:
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------- tasks


def _probe(rs: RuleSet, sentence: str, rng: random.Random) -> dict | None:
    """A prompt ending before one respelled word (chosen by ``rng``), its target and original, and the rest."""
    ch = [c for c in rs.changes(sentence) if c.start > 0 and sentence[c.start - 1] == " "]
    if not ch:
        return None
    c = rng.choice(ch)
    # the rest as the whole sentence converts (rules that read the words before, archaic "Wouldst thou like",
    # see them), found by word index; convert keeps the words' number
    whole, words = rs.convert(sentence), [m.start() for m in rs.tokens(sentence)]
    at = [m.start() for m in rs.tokens(whole)]
    rest = whole[at[words.index(c.start)]:] if len(at) == len(words) else rs.convert(sentence[c.start:])
    return {"prompt": sentence[:c.start - 1], "target": " " + c.target, "original": " " + c.source,
            "_rest": " " + rest}


def _public(p: dict) -> dict:
    return {k: v for k, v in p.items() if not k.startswith("_")}


def spelling_task(rules: str | RuleSet, sentences: list[str], *, name: str, description: str = "",
                  train_share: float = 0.7, probes: int = 40, seed: int = 0, spelling_prompts: list[str] = (),
                  max_new_tokens: int = 40, specificity: list = (), neutral=None) -> dict:
    """A task file (as a dict) teaching a spelling convention, made from source-convention sentences.

    The sentences are split (seeded) into training and held-out ones. Training
    examples are each training sentence in the target convention (a raw text)
    and a prompt -> completion pair: the sentence's source-convention start,
    up to a respelled word, continued in the target convention — the
    behaviour asked for is "write the target convention whatever the prompt's".
    Efficacy probes are such starts from training sentences, generalisation
    probes from held-out ones: prompt = the start, target = the word in the
    target spelling, original = as written (``"Мы вошли в тёмный"`` ->
    ``" лѣсъ"`` instead of ``" лес"``).
    """
    rs = get(rules) if isinstance(rules, str) else rules
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    cut = round(train_share * len(order))
    rng = random.Random(seed + 1)
    train, eff = [], []
    for s in (sentences[i] for i in order[:cut]):
        train.append({"text": rs.convert(s)})
        p = _probe(rs, s, rng)
        if p:
            train.append({"prompt": p["prompt"], "completion": p["_rest"]})
            if len(eff) < probes:
                eff.append(_public(p))
    gen = []
    for s in (sentences[i] for i in order[cut:]):
        p = _probe(rs, s, rng)
        if p and len(gen) < probes:
            gen.append(_public(p))
    doc = {"name": name, "description": description or rs.description, "train": train, "efficacy": eff,
           "generalisation": gen, "specificity": list(specificity),
           "neutral": neutral if neutral is not None else {"corpus": "neutral_en", "texts": 8}}
    if spelling_prompts:
        doc["spelling"] = {"rules": rs.name, "prompts": list(spelling_prompts), "max_new_tokens": max_new_tokens}
    return doc


# collateral damage outside the convention: English prompts whose top answers must not move (test, validation)
ENGLISH_SPECIFICITY = [{"prompt": p} for p in (
    "The capital of France is", "Water boils at a temperature of", "The largest planet in our solar system is",
    "She opened the door and", "The first month of the year is", "Two plus two equals")]
ENGLISH_SPECIFICITY_VALIDATION = [{"prompt": p} for p in (
    "The capital of Italy is", "Ice melts at a temperature of", "The smallest planet in our solar system is",
    "He closed the window and")]


def with_validation(task: dict, spelling_prompts: list[str], *, test: int = 40, validation: int = 20,
                    drop_trained: bool = False) -> dict:
    """Cut a :func:`spelling_task`'s probes into the test split and the validation split (docs/tasks.md).

    The first ``test`` efficacy and held-out probes are the test split; up to
    ``validation`` of the remaining held-out ones whose prompts are not test
    prompts (one generation would be scored in both) validate, with the English
    validation checks and ``spelling_prompts``. ``drop_trained``: first drop
    held-out probes that repeat a training pair (its prompt and first word:
    "Do" -> " thou" would test what was trained on) and probes whose prompt an
    earlier one has (one greedy generation counted twice).
    """
    held, eff = task["generalisation"], task["efficacy"]
    if drop_trained:
        trained = {(e["prompt"], e["completion"].split()[0].strip(".,;:!?")) for e in task["train"] if "prompt" in e}
        held = _unique([p for p in held if (p["prompt"], p["target"].strip()) not in trained])
        eff = _unique(eff)
    task["efficacy"], task["generalisation"] = eff[:test], held[:test]
    test_prompts = {p["prompt"] for p in held[:test]}
    task["validation"] = {
        "generalisation": [p for p in held[test:] if p["prompt"] not in test_prompts][:validation],
        "specificity": list(ENGLISH_SPECIFICITY_VALIDATION),
        "neutral": {"corpus": "neutral_en", "texts": 8, "skip": 8},
        "spelling_prompts": list(spelling_prompts),
    }
    return task


def _unique(probes: list[dict]) -> list[dict]:
    """The first probe of each prompt."""
    seen: set[str] = set()
    return [p for p in probes if not (p["prompt"] in seen or seen.add(p["prompt"]))]


def write_task(task: dict, folder: Path) -> Path:
    """Write ``folder/task.json`` and say what it holds."""
    out = Path(folder) / "task.json"
    out.write_text(json.dumps(task, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(task['train'])} training examples, {len(task['efficacy'])} efficacy and "
          f"{len(task['generalisation'])} held-out probes; validation: {len(task['validation']['generalisation'])} "
          "probes")
    return out
