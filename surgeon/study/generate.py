"""What the model *writes*: generated success, degeneration, fluency, and an interval on every rate.

Teacher-forced scores (P(target) > P(original)) can read 96.8 % where the
answers a model generates succeed 38.5 % ("The Mirage of Model Editing",
Yang et al. 2025, arXiv 2502.11177). So beside them we score greedy
generations, without teacher forcing:

* **generated success** of a probe: its greedy continuation of up to
  :data:`ANSWER_TOKENS` tokens contains the target (as a whole word or
  phrase) and not the original answer, and is not degenerate (the Mirage
  paper's protocol). For spelling tasks the task's own criterion is the rule
  set: the rate of target spellings among the words of the continuations
  that the rules speak about.
* **degeneration** (:func:`degeneration`): repeated phrases, character runs
  (``былъъъъ``), lone marks (a word that is only ``ъ``/``ь``). Degenerate
  text never counts as success.
* **fluency** (:func:`fluency`): ROME's weighted bi-/tri-gram entropy of
  free generations (Meng et al. 2022, ``n_gram_entropy`` in their
  evaluation code): a model that loops scores low.
* every rate carries its count and a Wilson score interval (:class:`Rate`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from surgeon.runtime import Runtime, load
from surgeon.study import spelling

ANSWER_TOKENS = 8  # greedy tokens after a probe's prompt (the Mirage paper's short-answer setting)
FREE_TOKENS = 40  # tokens of each free generation (fluency, degeneration)
PROMPT_WORDS = 8  # a neutral text's first words make a free-generation prompt
GEN_BATCH = 32  # prompts per left-padded greedy batch: 5-10x faster than one at a time on CPU, and the same
# text (248 of 248 generations alike on SmolLM2 and Gemma-3, spelling, answer and free-text prompts)
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


# ----------------------------------------------------------------- rates


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of k successes in n trials (95 % for z = 1.96); None when n = 0."""
    if n <= 0:
        return None
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, mid - half), min(1.0, mid + half)


@dataclass(frozen=True)
class Rate:
    """k of n, with its Wilson interval: a share that says how much it rests on."""

    k: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.k, self.n)

    def to_dict(self) -> dict:
        lo_hi = self.interval
        return {"k": self.k, "n": self.n, "rate": self.rate,
                "lo": None if lo_hi is None else lo_hi[0], "hi": None if lo_hi is None else lo_hi[1]}

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.k + other.k, self.n + other.n)


# ----------------------------------------------------------------- degeneration, fluency


_RUN = re.compile(r"([^\W\d_])\1{3,}", re.UNICODE)  # a letter four times in a row: "ъъъъ", "aaaa"
_DOUBLE_SIGN = re.compile(r"[ъь]{2,}", re.IGNORECASE)  # hard/soft signs never double in Russian
_LONE_MARK = re.compile(r"(?<!\w)[ъьЪЬ]+(?!\w)")  # a "word" that is only a sign
_MARK_START = re.compile(r"(?<!\w)[ъьЪЬ]\w")  # no Russian word starts with a sign
_SAME_WORD = re.compile(r"(?<!\w)(\w+)(?:\W+\1(?!\w)){2,}", re.IGNORECASE)  # a word three times in a row


def degeneration(text: str) -> str | None:
    """Why ``text`` is degenerate (a short reason), or None when it reads as text.

    Repeated phrases: a word three times in a row, a 5-word sequence twice,
    or a 3-word sequence three times. Character runs: a letter four times in a row, or doubled hard/soft
    signs. Lone marks: a word made only of ``ъ``/``ь``, or starting with one.
    """
    if m := _RUN.search(text):
        return f"character run {m.group(0)!r}"
    if m := _DOUBLE_SIGN.search(text):
        return f"doubled sign {m.group(0)!r}"
    if m := _LONE_MARK.search(text) or _MARK_START.search(text):
        return f"lone mark {m.group(0)!r}"
    if m := _SAME_WORD.search(text):
        return f"repeats {m.group(1)!r} in a row"
    words = re.findall(r"\w+", text.lower())
    for n, times in ((5, 2), (3, 3)):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        top = grams.most_common(1)
        if top and top[0][1] >= times:
            return f"repeats {' '.join(top[0][0])!r} {top[0][1]} times"
    return None


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """ROME's fluency of one text: the weighted mean of its bi- and tri-gram entropies (bits).

    As ``compute_n_gram_entropy`` in ROME's evaluation code (words and
    punctuation as tokens, as nltk's word_tokenize splits them).
    """
    toks = _WORD.findall(text)
    out = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        out.append(h * w)
    return sum(out) / len(out)


def fluency(texts: list[str]) -> float | None:
    """Mean :func:`ngram_entropy` over ``texts`` (ROME's ``n_gram_entropy``, arithmetic mean)."""
    return sum(map(ngram_entropy, texts)) / len(texts) if texts else None


# ----------------------------------------------------------------- generation


def runtime(x) -> Runtime:
    return x if isinstance(x, Runtime) else load(x)


def greedy(model, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations in left-padded batches of :data:`GEN_BATCH` (positions follow the mask)."""
    return runtime(model).generate(prompts, max_new_tokens, batch_size=GEN_BATCH)


def neutral_prompts(texts: list[str], n: int = 8, words: int = PROMPT_WORDS) -> list[str]:
    """Free-generation prompts: the first ``words`` words of the first ``n`` neutral texts."""
    return [" ".join(t.split()[:words]) for t in texts[:n] if len(t.split()) > words]


def says(text: str, answer: str) -> bool:
    """Whether ``answer`` (stripped) occurs in ``text`` as whole words ("Rome" in "Rome, Italy", not "Romes")."""
    a = answer.strip()
    return bool(a) and re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", text) is not None


@dataclass
class Generated:
    """Generated success on a list of probes: the rate and one row per probe."""

    rate: Rate
    degenerate: Rate  # probes whose continuation is degenerate
    rows: list[dict]


def generated_success(model, probes, originals: list[str] | None = None, *, rules: str | None = None,
                      max_new_tokens: int = ANSWER_TOKENS, keep: bool = False) -> Generated:
    """Greedy continuations of the probes, scored without teacher forcing.

    ``probes``: objects with ``prompt``, ``target``, ``original`` (task
    probes). ``originals`` overrides each probe's original answer (the
    reference model's top-1 when the task names none). Without ``rules``: a
    probe succeeds when its continuation contains the target, not the
    original, and is not degenerate (``keep=True`` turns it around: the
    original kept and the target absent — the neighbourhood, generated).
    With ``rules`` (a :mod:`surgeon.study.spelling` rule set name) the rate
    is over the words the rules speak about: target spellings among them,
    every word of a degenerate continuation counted as a miss (at least one).
    """
    texts = greedy(model, [p.prompt for p in probes], max_new_tokens)
    originals = originals or [p.original for p in probes]
    rows, k, n, bad = [], 0, 0, 0
    for p, orig, text in zip(probes, originals, texts):
        why = degeneration(text)
        bad += why is not None
        row = {"prompt": p.prompt, "generated": text, "degenerate": why}
        if rules:
            s = spelling.get(rules).score([text])
            hits, total = (0, max(1, s.applicable + s.over_marked)) if why else (s.hits, s.applicable + s.over_marked)
            row.update(hits=hits, words=total)
        else:
            want, avoid = (orig, p.target) if keep else (p.target, orig)
            ok = why is None and says(text, want) and not (avoid and says(text, avoid))
            hits, total = int(ok), 1
            row.update(target=p.target, original=orig, success=ok)
        k, n = k + hits, n + total
        rows.append(row)
    return Generated(Rate(k, n), Rate(bad, len(texts)), rows)


@dataclass
class Free:
    """Free generations from neutral prompts: fluency and degeneration."""

    fluency: float | None
    degenerate: Rate
    texts: list[str]


def free_text(model, prompts: list[str], *, max_new_tokens: int = FREE_TOKENS) -> Free:
    """Fluency (ROME's n-gram entropy) and degeneration of greedy free generations from ``prompts``."""
    texts = greedy(model, prompts, max_new_tokens)
    return Free(fluency(texts), Rate(sum(degeneration(t) is not None for t in texts), len(texts)), texts)


def spelling_counts(rules: str, texts: list[str]) -> tuple[Rate, Rate]:
    """(target spellings among the words the rules speak about, degenerate texts) in free generations.

    Words of a degenerate text all count as misses (at least one per text).
    """
    rs = spelling.get(rules)
    k = n = bad = 0
    for t in texts:
        s = rs.score([t])
        words = s.applicable + s.over_marked
        if degeneration(t):
            bad += 1
            n += max(1, words)
        else:
            k, n = k + s.hits, n + words
    return Rate(k, n), Rate(bad, len(texts))
