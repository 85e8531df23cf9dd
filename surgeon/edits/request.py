"""What the key–value fact edits (ROME, MEMIT, AlphaEdit) share: the request, the short corpus prefixes
that k* and v* are averaged over (ROME, arXiv 2202.05262, §3.1), the subject's last token (where the key
is read and the value written), and the record of an edit's parameters."""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

from surgeon.data import neutral_paragraphs


@dataclass
class RankOneRequest:
    """One fact: ``prompt`` contains ``subject`` and should continue with ``target`` (mind the leading space)."""

    prompt: str
    subject: str
    target: str


def corpus_prefixes(n: int, words: tuple[int, ...] = (5, 10), seed: int = 0) -> list[str]:
    """``n`` short openings of corpus sentences, each ending in ". ", lengths cycling through ``words``."""
    sentences = [s for para in neutral_paragraphs("fit") for s in re.split(r"(?<=[.!?])\s+", para)]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        want = words[i % len(words)]
        pool = [s for s in sentences if len(s.split()) > want]
        opening = " ".join(rng.choice(pool).split()[:want]).rstrip(",;:.")
        out.append(opening + ". ")
    return out


def subject_token(tok, text: str, subject: str, start: int) -> int:
    """Index of the last token overlapping ``subject`` (first occurrence at or after char ``start``)."""
    s = text.find(subject, start)
    end = s + len(subject)
    if getattr(tok, "is_fast", False):
        offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
        hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > s]
        if hits:
            return hits[-1]
    return len(tok(text[:end])["input_ids"]) - 1


def params_record(p) -> dict:
    """A parameter dataclass as JSON (tuples as lists), for the edit's notes."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()}
