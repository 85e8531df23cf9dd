"""Pre-1918 Russian orthography: ѣ in the ять roots, word-final ъ, і, ѳ and the genitive in -аго.

The word lists are data (``surgeon/data/spelling/``): ``prereform_ru_roots.txt``
holds the ять roots, one line each (its header explains the columns);
``prereform_ru.json`` the prefixes, the named tail sets, the -ѣть verbs, the
comparatives, the words spelled as a whole and the stress lists for -аго.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache

from surgeon import data
from surgeon.study.spelling.base import RuleSet, recase

_LETTER = {"Е": "ѣ", "Ф": "ѳ", "И": "і"}  # a marked root letter -> the old letter
_PLAIN = {"Е": "е", "Ф": "ф", "И": "и"}  # ... -> the modern letter
_VOWELS = set("аеёиоуыэюяѣ")
_HARD_FINAL = set("бвгджзклмнпрстфхцчшщѳ")
_NUMERAL_COMPOUND = re.compile(r"^(пяти|шести|семи|восьми|девяти|десяти|двадцати|тридцати)[аеиоуэюя]")
_LOCATIVE_SKIP = re.compile(r".*(ом|ем|ой|ей|ому|ему|ём)$")  # adjectives between preposition and noun


@dataclass(frozen=True)
class _Tables:
    prefixes: tuple[str, ...]
    tails: dict[str, str]  # a named tail set: what may follow a root ("" written as an empty alternative)
    verbs_2nd: tuple[str, ...]  # -ѣть verbs of the 2nd conjugation (видѣть: вижу): ѣ in some forms
    verbs_1st: tuple[str, ...]  # ... of the 1st (имѣть: имѣю): ѣ in every form
    comparatives: tuple[str, ...]  # stems of comparatives in -ѣе/-ѣй (-ее alone cannot tell сильнѣе from синее)
    exact: dict[str, str]  # words spelled as a whole (lowercase, ё-sensitive: "всё" is not "все")
    end_stressed: frozenset[str]  # adjective stems stressed on the ending: their genitive keeps -ого
    keep_ogo: frozenset[str]  # words in -ого/-его that are not adjective genitives (его, много)
    locative_prepositions: frozenset[str]  # governing the prepositional or dative: a noun in -е after them takes -ѣ
    no_locative: frozenset[str]  # words in -е that never take that -ѣ (indeclinable nouns, pronouns)
    excluded_words: frozenset[str]  # look like a root but are not (умер is not мѣр-)
    excluded_starts: tuple[str, ...]


@cache
def _tables() -> _Tables:
    d = json.loads(data.shipped_text("spelling/prereform_ru.json"))
    return _Tables(
        prefixes=tuple(d["prefixes"]), tails=dict(d["tails"]), verbs_2nd=tuple(d["verbs_2nd"]),
        verbs_1st=tuple(d["verbs_1st"]), comparatives=tuple(d["comparatives"]), exact=dict(d["exact"]),
        end_stressed=frozenset(d["end_stressed"]), keep_ogo=frozenset(d["keep_ogo"]),
        locative_prepositions=frozenset(d["locative_prepositions"]), no_locative=frozenset(d["no_locative"]),
        excluded_words=frozenset(d["excluded_words"]), excluded_starts=tuple(d["excluded_starts"]))


# ------------------------------------------------------------------ ять roots


@dataclass(frozen=True)
class _Root:
    marked: str
    plain: str
    regex: re.Pattern
    marks: tuple[tuple[int, str], ...]  # (offset in root, target letter)
    yo_ok: bool


def _prefix_alt(spec: str) -> tuple[str, bool]:
    """(regex for the prefix part, required?)"""
    if spec == "-":
        return "", False
    prefixes = list(_tables().prefixes)
    mode, _, names = spec.partition(":")
    names = names.split(",") if names else prefixes
    alt = "|".join(sorted({re.escape(n) for n in names}, key=lambda n: (-len(n), n)))  # longest first
    if names == prefixes:
        return f"(?:не)?(?:{alt})?(?:{alt})?", mode == "P"
    return f"(?:не)?(?:{alt})", mode == "P"


def _root_entries() -> list[tuple[str, str, str, str]]:
    """(marked root, prefix spec, tails, excluded tail starts): the roots file, then the verbs and comparatives."""
    t = _tables()
    lines = [ln.split() for ln in data.shipped_text("spelling/prereform_ru_roots.txt").splitlines()
             if ln.strip() and not ln.startswith("#")]
    entries = [(p[0], p[1], p[2], p[3] if len(p) > 3 else "") for p in lines]
    entries += [(stem, "p", "V2", "") for stem in t.verbs_2nd]
    entries += [(stem, "p", "V1", "") for stem in t.verbs_1st]
    entries += [(stem + "Е", "p:по", "е|й", "") for stem in t.comparatives]
    return entries


def _root(marked: str, pspec: str, tails: str, excl: str) -> _Root:
    """One root line compiled: ``^prefix? plain-root (?!excluded) (?:tails)$``."""
    named = _tables().tails
    yo_ok = marked.endswith("!")
    marked = marked.rstrip("!")
    marks = tuple((i, _LETTER[c]) for i, c in enumerate(marked) if c in _LETTER)
    plain = "".join(_PLAIN[c] if c in _LETTER else c.lower() for c in marked)
    pre, required = _prefix_alt(pspec)
    tail = named[tails] if tails in named else "|".join(named.get(t, t) for t in tails.split("|"))
    neg = "".join(f"(?!{x})" for x in excl.lstrip("!").split(",") if x) if excl else ""
    pre_part = f"(?P<pre>{pre})" if required else (f"(?P<pre>(?:{pre})?)" if pre else "(?P<pre>)")
    rx = re.compile(f"^{pre_part}{re.escape(plain)}{neg}(?:{tail})$")
    return _Root(marked, plain, rx, marks, yo_ok)


@cache
def _roots() -> tuple[_Root, ...]:
    return tuple(_root(*e) for e in _root_entries())


def _yat(word: str) -> str:
    """ѣ / ѳ / і at the marked places of the longest matching root (``word`` lowercase, ё kept)."""
    t = _tables()
    n = word.replace("ё", "е")
    if n in t.excluded_words or n.startswith(t.excluded_starts):
        return n
    best = None
    for r in _roots():
        if r.plain not in n:
            continue
        m = r.regex.match(n)
        if not m:
            continue
        at = m.end("pre")
        if not r.yo_ok and any(word[at + i] == "ё" for i, _ in r.marks):
            continue
        if best is None or len(r.plain) > len(best[0].plain):
            best = (r, at)
    if best is None:
        return n
    r, at = best
    chars = list(n)
    for i, c in r.marks:
        chars[at + i] = c
    return "".join(chars)


# ------------------------------------------------------------------ the other rules


def _ago(modern: str, t: str) -> str:
    """Genitive -ого/-его of adjectives, participles, ordinals -> -аго/-яго when the ending is unstressed."""
    tables = _tables()
    if len(modern) < 5 or modern in tables.keep_ogo or not modern.endswith(("ого", "его")):
        return t
    stem = modern[:-3]
    if modern.endswith("ого"):
        if stem in tables.end_stressed or (stem.startswith("не") and stem[2:] in tables.end_stressed):
            return t
        return t[:-3] + "аго"
    return t[:-3] + ("аго" if stem[-1] in "жшчщ" else "яго")


def _i_before_vowel(modern: str, t: str) -> str:
    """и -> і before a vowel or й (not in numeral compounds such as пятиэтажный)."""
    if _NUMERAL_COMPOUND.match(modern):
        return t
    chars = list(t)
    for k in range(len(chars) - 1):
        if chars[k] == "и" and (chars[k + 1] in _VOWELS or chars[k + 1] == "й"):
            chars[k] = "і"
    return "".join(chars)


def _prereform_word(word: str) -> str:
    """One word (lowercase, modern spelling; ё allowed) in pre-1918 spelling, without the context rule."""
    if not word or not re.fullmatch(r"[а-яё]+", word):
        return word
    t = _tables().exact.get(word)
    modern = word.replace("ё", "е")
    if t is None:
        t = _yat(word)
        t = re.sub(r"(?<=[бвгджзклмнпрстфхцчшщ])ейш", "ѣйш", t)  # superlatives: новѣйшій
        t = _ago(modern, t)
    t = _i_before_vowel(modern, t)
    if t[-1] in _HARD_FINAL:
        t += "ъ"
    return t


def _ate_after_pronoun(low: list[str], seps: list[str], out: list[str]) -> None:
    """ѣли 'ate' after a personal pronoun (alone, ели is also 'fir trees')."""
    for i, w in enumerate(low):
        if w == "ели" and i and low[i - 1] in ("мы", "вы", "они", "все") and not seps[i].strip():
            out[i] = "ѣли"


def _locative(low: list[str], seps: list[str], out: list[str]) -> None:
    """The dative/prepositional -ѣ of a noun in -е after a preposition, skipping up to two adjectives."""
    t = _tables()
    for i, w in enumerate(low):
        if w not in t.locative_prepositions:
            continue
        j = i + 1
        for _ in range(3):
            if j >= len(low) or seps[j].strip():
                break
            nxt = low[j]
            if nxt.endswith("е") and len(nxt) >= 3 and nxt not in t.no_locative \
                    and not nxt.endswith(("ие", "ье", "ее", "ое", "ые", "ьё")) and out[j].endswith("е"):
                out[j] = out[j][:-1] + "ѣ"
                break
            if not _LOCATIVE_SKIP.match(nxt) or nxt in ("том", "чём", "чем", "нём", "нем", "ком"):
                break
            j += 1


def _spurious_signs(low: str) -> bool:
    """Whether ``low`` has a ъ inside it that is not the separating sign after a prefix (подъѣздъ,
    объявленіе, необъятный, съѣсть): ``деревъне``, ``Пъятки`` (a prefix-like piece given a final ъ)."""
    prefixes = _tables().prefixes
    for k in range(len(low) - 1):
        if low[k] != "ъ":
            continue
        head = low[:k]
        head = head[2:] if head.startswith("не") and head[2:] else head
        ok = low[k + 1] in "еёюяѣ" and (head in prefixes or any(
            head.startswith(a) and head[len(a):] in prefixes for a in prefixes))
        if not ok:
            return True
    return False


class PrereformRussian(RuleSet):
    """Modern Russian -> the orthography before the 1917-18 reform.

    Covered:

    * **ъ** after every word-final consonant except й (``въ``, ``лѣсъ``,
      ``ключъ``, ``изъ-за``); not after ь or a vowel.
    * **і** for и before a vowel or й (``исторія``, ``синій``, ``пріѣхать``),
      except in numeral compounds (``пятиэтажный``); **міръ** 'world' for мир
      (the converter cannot tell it from миръ 'peace' and always writes міръ).
    * **ѣ** in about 200 ять roots with their prefixes and endings (school list
      and Grot's dictionary), the -ѣть verbs (``видѣть``, ``имѣетъ``),
      comparatives in -ѣе/-ѣй from a list, superlatives -ѣйшій, the
      pronouns and adverbs (``гдѣ``, ``мнѣ``, ``тѣхъ``, ``всѣ``, ``послѣ``),
      and **the dative/prepositional ending -ѣ** by a heuristic: a word in -е
      right after в/во/на/о/об/при/к/ко/по (skipping up to two adjectives
      in -омъ/-ой/-ей...) gets -ѣ (``въ лѣсу``, ``на столѣ``, ``къ мамѣ``).
      The heuristic misses datives without a preposition and misreads the few
      neuter nouns whose accusative ends in -е (``въ поле`` 'into the field').
    * **-аго/-яго** for the unstressed genitive ending -ого/-его of adjectives
      and participles (``новаго``, ``синяго``, ``хорошаго``); stress is
      guessed from a list of about 100 end-stressed stems (``большого``,
      ``городского`` stay). An end-stressed adjective missing from the list
      wrongly gets -аго.
    * **ѳ** in a few Greek names and loanwords (``Ѳедоръ``, ``Аѳины``,
      ``миѳъ``, ``ариѳметика``).
    * **ё** is written е, as it usually was.

    Not covered: ея (her) for её, онѣ/однѣ for feminine они/одни, -ыя/-ія
    plural adjective endings (they need the noun's gender), з before a
    voiceless consonant in prefixes (безполезный), ѵ, and ять roots missing
    from the list (those words keep е and are not counted by :meth:`rate`).
    """

    name = "prereform_ru"
    description = "modern Russian -> pre-1918 orthography (ѣ, ъ, і, ѳ, -аго)"
    _word = re.compile(r"[А-Яа-яЁёѢѣІіѲѳѴѵ]+(?:[iI][А-Яа-яЁёѢѣІіѲѳ]*)*|[iI](?=[А-Яа-яЁёѢѣІіѲѳ])[А-Яа-яЁёѢѣІіѲѳiI]*")

    def _convert_words(self, words, seps):
        low = [w.lower() for w in words]
        out = [_prereform_word(w) for w in low]
        _ate_after_pronoun(low, seps, out)
        _locative(low, seps, out)
        return [recase(w, t) for w, t in zip(words, out)]

    def written(self, word):
        """A Latin i inside a Cyrillic word (as in many digitised old texts) counts as і."""
        if re.search(r"[iI]", word) and re.search(r"[А-Яа-яЁё]", word):
            return word.replace("i", "і").replace("I", "І")
        return word

    def source_word(self, word):
        w = self.written(word)
        low = w.lower()
        if low.endswith("ъ") and len(low) > 1:
            low = low[:-1]
        if _spurious_signs(low) and not low.startswith("ъ"):  # a lone mark stays as written (degenerate anyway)
            low = low[0] + low[1:].replace("ъ", "")
        if low.endswith("аго") and len(low) >= 5:
            low = low[:-3] + ("его" if low[-4] in "жшчщ" else "ого")
        elif low.endswith("яго") and len(low) >= 5:
            low = low[:-3] + "его"
        low = low.translate(str.maketrans("ѣіѳѵ", "еифи"))
        return recase(w, low)

    def rules_of(self, source, target):
        s, t = source.lower().replace("ё", "е"), target.lower()
        rules = []
        if t.endswith("ъ") and not s.endswith("ъ"):
            rules.append("ъ")
        rules += [c for c in "ѣіѳ" if c in t]
        if t.endswith(("аго", "яго")) and not s.endswith(("аго", "яго")):
            rules.append("-аго")
        return tuple(rules)

    def _score_word(self, s, g, a, t, keep):
        """As the base class; a ъ where none belongs also counts under the ъ rule, as a miss (inside a
        word, ``деревъне``, or after a vowel, ``былоъ``): hard-sign compliance is about where the sign
        goes, not only about the words that need one."""
        super()._score_word(s, g, a, t, keep)
        low = self.written(g).lower()
        final = low.endswith("ъ") and len(low) > 1
        if (final and not t.lower().endswith("ъ")) or _spurious_signs(low[:-1] if final else low):
            s.by_rule.setdefault("ъ", [0, 0])[1] += 1

    def agrees(self, written, target, rule):
        w = self.written(written).lower()
        t = target.lower()
        if rule == "ъ":
            return w.endswith("ъ")
        w, t = w.rstrip("ъ"), t.rstrip("ъ")
        if rule == "-аго":
            return w[-3:] == t[-3:]
        if len(w) != len(t):
            return False
        return all(w[k] == rule for k, c in enumerate(t) if c == rule)
