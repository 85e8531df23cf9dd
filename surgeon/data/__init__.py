"""Text that ships with surgeon (see README.md here): one loader, one held-out split.

``neutral_en`` is split once, here: its last :data:`EVAL_PARAGRAPHS` paragraphs
are held out from everything that *fits* (the key covariance C, ROME's
prefixes) so KL measured on them is on text no edit saw. Task files that ask
for ``{"corpus": "neutral_en", "from": "end"}`` draw from that held-out part.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

NEUTRAL = "neutral_en"
EVAL_PARAGRAPHS = 20  # neutral_en's last paragraphs: held out for measurement, never fitted on


class CorpusError(ValueError):
    """A corpus that is not shipped, or a request for more text than it has."""


@cache
def _paragraphs(corpus: str) -> tuple[str, ...]:
    f = resources.files("surgeon.data").joinpath(f"{corpus}.txt")
    if not f.is_file():
        raise CorpusError(f"no corpus {corpus!r} in surgeon/data")
    return tuple(p.strip() for p in f.read_text(encoding="utf-8").split("\n\n") if p.strip())


@cache
def shipped_text(name: str) -> str:
    """A file shipped under surgeon/data, by its path there (``"spelling/en_gb.json"``); read once."""
    f = resources.files("surgeon.data")
    for part in name.split("/"):
        f = f.joinpath(part)
    if not f.is_file():
        raise CorpusError(f"no file {name!r} in surgeon/data")
    return f.read_text(encoding="utf-8")


def paragraphs(corpus: str = NEUTRAL, part: str = "all") -> list[str]:
    """Paragraphs of a shipped corpus; ``part``: ``"all"``, ``"fit"`` or ``"eval"`` (the held-out tail)."""
    paras = list(_paragraphs(corpus))
    held = EVAL_PARAGRAPHS if corpus == NEUTRAL else 0
    if part == "all":
        return paras
    if part == "fit":
        return paras[: len(paras) - held]
    if part == "eval":
        return paras[len(paras) - held:]
    raise CorpusError(f"part must be 'fit', 'eval' or 'all', not {part!r}")


def neutral_paragraphs(part: str = "fit") -> list[str]:
    """Paragraphs of ``neutral_en.txt``: ``"fit"`` (C, edit prefixes), ``"eval"`` (held out) or ``"all"``."""
    return paragraphs(NEUTRAL, part)


def texts(corpus: str, n: int, *, from_end: bool = False) -> list[str]:
    """The first (or, ``from_end``, the last) ``n`` paragraphs of a shipped corpus."""
    paras = paragraphs(corpus)
    if not 1 <= n <= len(paras):
        raise CorpusError(f"corpus {corpus!r} has {len(paras)} paragraphs; asked for {n}")
    return paras[-n:] if from_end else paras[:n]
