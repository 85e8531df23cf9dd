"""What every rule set shares: a word-by-word converter and the score of a text against it.

A rule set maps a word in the *source* convention to the *target* one
(:meth:`RuleSet.convert`) and back (:meth:`RuleSet.source`). :meth:`RuleSet.score`
counts a written word when the rules spell it differently in the two conventions
(*applicable*) or when it carries target-convention marks the rules would not put
there (*over-marked*); the rate is the share of counted words written exactly as
the rules want.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from surgeon.errors import SurgeonError


class SpellingError(SurgeonError):
    """An unknown rule set name."""


@dataclass
class Change:
    """One word the rules respell: where it sits in the source text and both spellings."""

    start: int
    end: int
    source: str
    target: str
    rules: tuple[str, ...] = ()


@dataclass
class SpellingScore:
    """Counts behind :meth:`RuleSet.rate`; ``by_rule``: rule -> [hits, applicable]."""

    hits: int = 0
    applicable: int = 0
    over_marked: int = 0  # counted too: written with target marks where the rules put none
    by_rule: dict[str, list[int]] = field(default_factory=dict)
    misses: list[tuple[str, str]] = field(default_factory=list)  # (written, expected), first few

    @property
    def rate(self) -> float | None:
        n = self.applicable + self.over_marked
        return self.hits / n if n else None

    def to_dict(self) -> dict:
        return {"rate": self.rate, "hits": self.hits, "applicable": self.applicable, "over_marked": self.over_marked,
                "by_rule": {r: {"hits": h, "applicable": n, "rate": h / n if n else None}
                            for r, (h, n) in sorted(self.by_rule.items())},
                "misses": self.misses}

    def miss(self, written: str, expected: str, keep: int) -> None:
        if len(self.misses) < keep:
            self.misses.append((written, expected))


class RuleSet:
    """A spelling convention: ``convert`` source -> target, ``source`` target -> source, ``rate``."""

    name = ""
    description = ""
    _word = re.compile(r"\w+")

    # ------------------------------------------------------------ subclass API

    def _convert_words(self, words: list[str], seps: list[str]) -> list[str]:
        """Target spelling of each source word; ``seps[i]`` is the text before word i."""
        raise NotImplementedError

    def source_word(self, word: str) -> str:
        """The source-convention spelling of a word written in either convention."""
        raise NotImplementedError

    def source_words(self, words: list[str], seps: list[str]) -> list[str]:
        """Source spellings of written words; override where a word's reading depends on its neighbours
        (archaic ``art`` is ``are`` after ``thou`` and a noun elsewhere)."""
        return [self.source_word(w) for w in words]

    def rules_of(self, source: str, target: str) -> tuple[str, ...]:
        """Names of the rules that turn ``source`` into ``target`` (for the per-rule breakdown)."""
        return ()

    def agrees(self, written: str, target: str, rule: str) -> bool:
        """Whether ``written`` follows ``rule`` the way ``target`` does (default: whole-word match)."""
        return same(self.written(written), target)

    def written(self, word: str) -> str:
        """A generated word normalised for comparison (look-alike letters); identity by default."""
        return word

    # ------------------------------------------------------------- public API

    def tokens(self, text: str) -> list[re.Match]:
        return list(self._word.finditer(text))

    def convert(self, text: str) -> str:
        """``text`` respelled in the target convention; everything but the words is kept."""
        ms = self.tokens(text)
        return _join(text, ms, self._convert_words(*self._split(text, ms)))

    def source(self, text: str) -> str:
        """``text`` (in either convention) respelled in the source convention."""
        ms = self.tokens(text)
        return _join(text, ms, self.source_words(*self._split(text, ms)))

    def changes(self, text: str) -> list[Change]:
        """The words of a source-convention ``text`` that the rules respell (for building probes)."""
        ms = self.tokens(text)
        new = self._convert_words(*self._split(text, ms))
        return [Change(m.start(), m.end(), m.group(), w, self.rules_of(m.group(), w))
                for m, w in zip(ms, new) if not same(m.group(), w)]

    def score(self, texts: list[str], *, keep_misses: int = 20) -> SpellingScore:
        """Count applicable words and the ones written in the target spelling."""
        s = SpellingScore()
        for text in texts:
            ms = self.tokens(text)
            written, seps = self._split(text, ms)
            src = self.source_words(written, seps)
            for g, a, t in zip(written, src, self._convert_words(src, seps)):
                self._score_word(s, g, a, t, keep_misses)
        return s

    def rate(self, texts: list[str]) -> float | None:
        """Share of counted words (applicable or over-marked) written as the rules want; None if none."""
        return self.score(texts).rate

    # ------------------------------------------------------------- internals

    def _score_word(self, s: SpellingScore, g: str, a: str, t: str, keep: int) -> None:
        """Count written word ``g`` whose source spelling is ``a`` and target spelling ``t``."""
        hit = same(self.written(g), t)
        if same(a, t):
            if not hit:  # marks where the rules put none
                s.over_marked += 1
                s.miss(g, t, keep)
            return
        s.applicable += 1
        s.hits += hit
        if not hit:
            s.miss(g, t, keep)
        for r in self.rules_of(a, t):
            row = s.by_rule.setdefault(r, [0, 0])
            row[1] += 1
            row[0] += self.agrees(g, t, r)

    @staticmethod
    def _split(text: str, ms: list[re.Match]) -> tuple[list[str], list[str]]:
        words = [m.group() for m in ms]
        seps = [text[(ms[i - 1].end() if i else 0):m.start()] for i, m in enumerate(ms)]
        return words, seps


def _join(text: str, ms: list[re.Match], words: list[str]) -> str:
    """``text`` with each matched word replaced by the word at the same index."""
    out, pos = [], 0
    for m, w in zip(ms, words):
        out.append(text[pos:m.start()])
        out.append(w)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def same(a: str, b: str) -> bool:
    """Equal but for case and ё/е."""
    return a.lower().replace("ё", "е") == b.lower().replace("ё", "е")


class WordTable(RuleSet):
    """A rule set that is a word list: each listed word (lower case) -> (its target spelling, the names of
    the rules that make it). The written case follows the source word's; other words stay as they are."""

    _word = re.compile(r"[A-Za-z]+")

    def __init__(self, table: dict[str, tuple[str, tuple[str, ...]]]):
        self.table = table
        self.back = {target: source for source, (target, _) in table.items()}

    def _convert_words(self, words, seps):
        out = []
        for w in words:
            hit = self.table.get(w.lower())
            out.append(recase(w, hit[0]) if hit else w)
        return out

    def source_word(self, word):
        source = self.back.get(word.lower())
        return recase(word, source) if source else word

    def rules_of(self, source, target):
        hit = self.table.get(source.lower())
        return hit[1] if hit else ()


def recase(like: str, word: str) -> str:
    """``word`` in the case pattern of ``like`` (UPPER, Capitalised or as is)."""
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word
