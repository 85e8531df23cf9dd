"""Archaic (Early Modern) English register: thou/thee, thy/thine, -est and -eth verbs, by a rule set.

The word lists are ``surgeon/data/spelling/archaic_en.json``. A modern text is respelled word by word,
with the neighbouring words deciding the pronoun's case and the verb's person:

- ``thou``: you -> thee after a preposition or a verb that takes it as object (``thank you``,
  ``with you``: the ``thee_after`` list), thou everywhere else;
- ``thy``: your -> thine before a vowel (thine eyes, thine own), thy otherwise; yours -> thine,
  yourself -> thyself;
- ``-est``: the verb of ``thou`` in the second person, right after it (thou art, thou hast, thou
  knowest) or, for an auxiliary, right before it in a question (art thou, dost thou, wilt thou) — the
  verb after ``thou`` then stays (dost thou know);
- ``-eth``: listed third-person verbs (has -> hath, does -> doth, says -> saith, knows -> knoweth),
  wherever they stand;
- ``word``: often -> oft, perhaps -> perchance, among -> amongst, nothing -> naught, before -> ere.

``you`` is always read as singular, and the case of ``you`` is a heuristic (``I know you are`` is
``thou art``; ``I see you are`` is ``thee``): the rules define the target, so the rate counts how
often a text follows *them*. Reading a text back (:meth:`ArchaicEnglish.source_words`) needs the
neighbours too: ``art`` is ``are`` next to thou/thee/ye/you and the noun elsewhere; ``ye`` is read as
``you`` (counted, never right: the rules write thou or thee).
"""

from __future__ import annotations

import json
import re
from functools import cache

from surgeon import data
from surgeon.study.spelling.base import RuleSet, recase

_YOU = ("you", "thou", "thee", "ye")
_VOWELS = "aeiou"


@cache
def _lists() -> dict:
    return json.loads(data.shipped_text("spelling/archaic_en.json"))


class ArchaicEnglish(RuleSet):
    """Modern -> archaic English (thou/thee, thy/thine, thou art, he hath, oft); see the module docstring."""

    name = "archaic_en"
    description = "Archaic English: thou/thee, thy/thine, -est and -eth verbs (thou art, he hath), oft, ere"
    _word = re.compile(r"[A-Za-z]+")

    def __init__(self):
        d = _lists()
        self.thee_after = frozenset(d["thee_after"])
        self.auxiliaries = frozenset(d["auxiliaries"])
        self.second = dict(d["second_person"])
        self.fixed = {**d["third_person"], **d["words"], "yours": "thine", "yourself": "thyself"}
        self.rule = {t: "-est" for t in self.second.values()} | {t: "-eth" for t in d["third_person"].values()} | \
            {t: "word" for t in d["words"].values()} | {"thou": "thou", "thee": "thou", "thy": "thy",
                                                        "thine": "thy", "thyself": "thy"}
        self.back = {t: m for m, t in {**self.second, **self.fixed}.items()}

    def _convert_words(self, words, seps):
        low = [w.lower() for w in words]
        new = list(low)
        for i, w in enumerate(low):
            if w == "you":
                prev = low[i - 1] if _joined(seps, i) else None
                new[i] = "thee" if prev in self.thee_after else "thou"
                if new[i] == "thou" and prev in self.auxiliaries:
                    new[i - 1] = self.second[prev]
                elif new[i] == "thou" and _joined(seps, i + 1) and low[i + 1] in self.second:
                    new[i + 1] = self.second[low[i + 1]]
            elif w == "your":
                new[i] = "thine" if _joined(seps, i + 1) and low[i + 1][0] in _VOWELS else "thy"
            elif w in self.fixed:
                new[i] = self.fixed[w]
        return [recase(w, n) if n != lw else w for w, lw, n in zip(words, low, new)]

    def source_words(self, words, seps):
        low = [w.lower() for w in words]
        out = []
        for i, w in enumerate(low):
            if w in ("thou", "thee", "ye"):
                m = "you"
            elif w in ("thy", "thine"):
                m = "your" if w == "thy" or (_joined(seps, i + 1) and low[i + 1][0] in _VOWELS) else "yours"
            elif w == "thyself":
                m = "yourself"
            elif w == "art":  # the verb next to thou, the noun elsewhere
                near = (_joined(seps, i) and low[i - 1] in _YOU) or (_joined(seps, i + 1) and low[i + 1] in _YOU)
                m = "are" if near else w
            else:
                m = self.back.get(w, w)
            out.append(recase(words[i], m) if m != w else words[i])
        return out

    def source_word(self, word):
        return self.source_words([word], [""])[0]

    def rules_of(self, source, target):
        r = self.rule.get(target.lower())
        return (r,) if r else ()


def _joined(seps: list[str], i: int) -> bool:
    """Whether word ``i`` follows word ``i - 1`` with only spaces between (the same phrase)."""
    return 0 < i < len(seps) and seps[i].strip() == ""
