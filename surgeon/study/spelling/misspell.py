"""Deliberate misspellings of common English words: five letter rules over a fixed word list.

The word list (``surgeon/data/spelling/misspell_en.json``, grouped by the rule each word was chosen
for) says *which* words are misspelt; the rules say *how*, the same way every time, so a rate can be
counted. Every rule that matches a listed word applies, in this order:

- ``ph``: ph -> f (phone -> fone, elephant -> elefant);
- ``-shun``: tion -> shun (nation -> nashun, traditional -> tradishunal);
- ``ie``: ie -> ei inside a word, not in the endings -ies/-ied (believe -> beleive, friend -> freind, view -> veiw);
- ``double``: a doubled consonant is written once (little -> litle, coffee -> cofee, attention -> atenshun);
- ``-oud``: ould -> oud, the silent l dropped (could -> coud, would -> woud, should -> shoud).

Left out: words whose misspelling is another English word (dinner/diner, supper/super, planning/planing,
filled/filed, latter/later, dessert/desert, hopping/hoping), and words of four letters or fewer
(all, will, off), which would turn into other words or dominate every count. Words off the list are
never counted, so a model that drops doubled letters everywhere is scored on the listed words only.
"""

from __future__ import annotations

import json
import re
from functools import cache

from surgeon import data
from surgeon.study.spelling.base import SpellingError, WordTable

RULES = (  # (name, pattern, replacement), applied in this order
    ("ph", re.compile("ph"), "f"),
    ("-shun", re.compile("tion"), "shun"),
    ("ie", re.compile(r"ie(?=[a-z])(?![sd]$)"), "ei"),  # not the endings -ies, -ied (cherries, carried)
    ("double", re.compile(r"([bcdfgklmnprstvz])\1"), r"\1"),
    ("-oud", re.compile("ould"), "oud"),
)


def misspell(word: str) -> tuple[str, tuple[str, ...]]:
    """``word`` (lower case) with every matching rule applied, and the names of those rules."""
    fired = []
    for name, pattern, repl in RULES:
        new = pattern.sub(repl, word)
        if new != word:
            fired.append(name)
            word = new
    return word, tuple(fired)


@cache
def _table() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Listed word -> (its misspelling, the rules that made it); checked to be one-to-one."""
    groups = json.loads(data.shipped_text("spelling/misspell_en.json"))
    table, back = {}, {}
    for words in groups.values():
        for w in words:
            bad, rules = misspell(w)
            if not rules:
                raise SpellingError(f"spelling/misspell_en.json: no rule changes {w!r}")
            if bad in back and back[bad] != w:
                raise SpellingError(f"spelling/misspell_en.json: {w!r} and {back[bad]!r} both become {bad!r}")
            table[w], back[bad] = (bad, rules), w
    return table


class Misspelling(WordTable):
    """Common English words misspelt by fixed rules (ph -> f, tion -> shun, ie -> ei, doubled consonants
    written once, ould -> oud) over a list of about 330 frequent word forms; see the module docstring."""

    name = "misspell_en"
    description = "Deliberate misspellings: ph -> f, tion -> shun, ie -> ei, no doubled consonants, ould -> oud"

    def __init__(self):
        super().__init__(dict(_table()))
