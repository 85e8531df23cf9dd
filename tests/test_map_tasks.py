"""The map's English behaviour tasks: the misspelling and archaic-register rule sets, and their task files."""

import re
from importlib import resources
from pathlib import Path

import pytest

from surgeon.study.spelling import get
from surgeon.study.task import Task

MIS = get("misspell_en")
ARC = get("archaic_en")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _lines(name: str) -> list[str]:
    return resources.files("surgeon.data").joinpath(name).read_text(encoding="utf-8").splitlines()


# ----------------------------------------------------------------- misspellings

MISSPELT = {
    "believe": "beleive", "friendship": "freindship", "view": "veiw", "phone": "fone", "photograph": "fotograf",
    "nation": "nashun", "traditional": "tradishunal", "attention": "atenshun", "little": "litle", "coffee": "cofee",
    "happiness": "hapines", "could": "coud", "shouldn": "shoudn",
    "carried": "caried", "cherries": "cheries",  # -ied / -ies are endings, not the ie of believe
    "dinner": "dinner", "tomato": "tomato", "the": "the",  # off the list: dinner would become diner
}


@pytest.mark.parametrize("word,bad", sorted(MISSPELT.items()))
def test_misspelling_word_pairs(word, bad):
    assert MIS.convert(word) == bad


def test_misspelling_is_the_same_in_every_context_and_case():
    assert MIS.convert("A little phone. LITTLE Phone, little-phone!") == "A litle fone. LITLE Fone, litle-fone!"
    assert MIS.changes("She would believe it")[0].rules == ("-oud",)
    assert MIS.changes("the attention")[0].rules == ("-shun", "double")


def test_misspelling_never_makes_another_english_word():
    """No misspelling is a word of the shipped English text (cud, diner, planing were dropped for that)."""
    vocab = {w.lower() for f in ("neutral_en.txt", "en_spelling.txt", "en_misspell.txt", "en_archaic.txt")
             for w in re.findall(r"[A-Za-z]+", "\n".join(_lines(f)))}
    assert len(MIS.table) >= 300
    made = {bad for bad, _ in MIS.table.values()}
    assert len(made) == len(MIS.table)  # one-to-one, so a written misspelling reads back to one word
    assert not made & vocab


def test_misspelling_round_trip_and_rate_on_the_shipped_sentences():
    lines = _lines("en_misspell.txt")
    assert len(lines) >= 200 and all(MIS.changes(x) for x in lines)
    bad = [MIS.convert(x) for x in lines]
    assert [MIS.source(x) for x in bad] == lines
    assert MIS.rate(bad) == 1.0 and MIS.rate(lines) == 0.0


def test_misspelling_rate_counts_only_listed_words():
    s = MIS.score(["My freind took a photo of the litle elephant at dinner."])
    assert (s.hits, s.applicable, s.over_marked) == (2, 4, 0)  # freind, litle right; photo, elephant not
    assert s.by_rule["ph"] == [0, 2] and s.by_rule["ie"] == [1, 1] and s.by_rule["double"] == [1, 1]
    assert s.misses == [("photo", "foto"), ("elephant", "elefant")]
    assert MIS.rate(["The dog ate a tomato."]) is None  # nothing listed: nothing counted


# --------------------------------------------------------------- archaic English

ARCHAIC = {
    "Thank you for your help.": "Thank thee for thy help.",
    "I hope you are well.": "I hope thou art well.",
    "Do you know where your aunt has gone?": "Dost thou know where thine aunt hath gone?",
    "You know that he often says nothing before dinner.": "Thou knowest that he oft saith naught ere dinner.",
    "If you want, I will give you the book. It is yours.": "If thou wantest, I will give thee the book. It is thine.",
    "Are you sure? Your own words tell you so.": "Art thou sure? Thine own words tell thee so.",
    "The art of the people.": "The art of the people.",  # nothing to change
}


@pytest.mark.parametrize("modern,old", sorted(ARCHAIC.items()))
def test_archaic_sentences(modern, old):
    assert ARC.convert(modern) == old
    assert ARC.source(old) == modern


def test_archaic_round_trip_and_rate_on_the_shipped_sentences():
    lines = _lines("en_archaic.txt")
    assert len(lines) >= 200 and all(ARC.changes(x) for x in lines)
    old = [ARC.convert(x) for x in lines]
    assert [ARC.source(x) for x in old] == lines
    assert ARC.rate(old) == 1.0 and ARC.rate(lines) == 0.0


def test_archaic_rate_reads_words_by_their_neighbours():
    s = ARC.score(["I hope thou are well and thy friend has a horse."])
    assert (s.hits, s.applicable) == (2, 4)  # thou, thy right; are (art), has (hath) not
    assert s.misses == [("are", "art"), ("has", "hath")]
    assert s.by_rule == {"thou": [1, 1], "-est": [0, 1], "thy": [1, 1], "-eth": [0, 1]}
    assert ARC.rate(["The art of painting is old."]) is None  # art, the noun: not counted
    assert ARC.rate(["Thou art kind."]) == 1.0  # art next to thou: the verb, counted and right
    assert ARC.score(["Ye are kind."]).misses == [("Ye", "Thou"), ("are", "art")]  # ye is counted, never right


# ------------------------------------------------------------------- task files

@pytest.mark.parametrize("name,rules", [("misspelling", "misspell_en"), ("archaic", "archaic_en")])
def test_task_file_loads_with_disjoint_splits(name, rules):
    task = Task.load(EXAMPLES / name / "task.json")
    val = task.split("validation")
    assert task.spelling["rules"] == rules
    assert len(task.generalisation) >= 40 and len(task.efficacy) >= 40 and len(val.generalisation) >= 15
    assert not task.prompts() & val.prompts()  # no held-out prompt, spelling prompt or neutral text in both
    for probes in (task.efficacy, task.generalisation, val.generalisation):  # one generation is scored once
        assert len({p.prompt for p in probes}) == len(probes)
    assert len(task.spelling["prompts"]) >= 16 and len(val.spelling["prompts"]) >= 8
    # a test probe is never a training pair: the held-out sentences are not trained on
    pairs = {(e.prompt, re.match(r"\s*(\w+)", e.completion).group(1)) for e in task.train if e.prompt}
    assert not [p for p in task.generalisation + val.generalisation if (p.prompt, p.target.strip()) in pairs]
    texts = {e.completion for e in task.train if not e.prompt}
    assert len(texts) >= 120 and all(get(rules).rate([t]) == 1.0 for t in texts)
    arms = dict(a.split("=", 1) if "=" in a else (a, a) for a in task.map["arms"])
    assert 3 <= len(arms) <= 5 and "none" in arms and task.map["advice_arm"] in arms
