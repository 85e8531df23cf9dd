"""American -> British English spelling, by a word list with inflections (``surgeon/data/spelling/en_gb.json``)."""

from __future__ import annotations

import json
from functools import cache

from surgeon import data
from surgeon.study.spelling.base import WordTable


@cache
def _table() -> dict[str, tuple[str, str]]:
    """American -> (British, rule) for every listed word form, inflections generated from the stems."""
    d = json.loads(data.shipped_text("spelling/en_gb.json"))
    table: dict[str, tuple[str, str]] = {}

    def put(us, gb, rule):
        table[us] = (gb, rule)

    # -or -> -our: the forms that keep the u in British spelling (not honorary, humorous, laborious, vigorous)
    for base, ends in d["our"].items():
        for e in ["", *ends]:
            put(base + e, base[:-2] + "our" + e, "-our")
    # -ize -> -ise, -yze -> -yse (the common British spelling; Oxford spelling keeps -ize)
    for stems, endings in (("ise_stems", "ise_endings"), ("yse_stems", "yse_endings")):
        for stem in d[stems]:
            for e, e2 in d[endings]:
                put(stem + e, stem + e2, "-ise")
    # -er -> -re, with a plural; the verbs also in -ed/-ing (centred, manoeuvring)
    for us, gb in d["re"]:
        put(us, gb, "-re")
        put(us + "s", gb + "s", "-re")
        if us in d["re_inflected"]:
            put(us + "ed", gb[:-1] + "ed", "-re")
            put(us + "ing", gb[:-1] + "ing", "-re")
    # doubled l before a suffix (travelled), then single words (jewellery; fulfil, enrol)
    for stem in d["ll_stems"]:
        for e in d["ll_endings"]:
            put(stem + e, stem + "l" + e, "-ll")
    for us, gb in d["ll"]:
        put(us, gb, "-ll")
    # -se -> -ce, -og -> -ogue (with plurals), and single words
    for us, gb in d["ce"]:
        put(us, gb, "-ce")
    for us, gb in d["ogue"]:
        put(us, gb, "-ogue")
        put(us + "s", gb + "s", "-ogue")
    for us, gb in d["words"]:
        put(us, gb, "word")
    return table


class BritishEnglish(WordTable):
    """American English -> British English spelling, by a word list with inflections.

    Covered: -or -> -our (colour, favourite, neighbour; not honorary, humorous,
    vigorous, which British keeps), -ize/-yze -> -ise/-yse (realise, analyse:
    the common British choice — Oxford spelling keeps -ize), -er -> -re (centre,
    theatre, metre units), a doubled l before a suffix (travelled, cancelling,
    jewellery, marvellous; and fulfil, enrol), -se -> -ce (defence), -og ->
    -ogue (catalogue), and single words (grey, mould, plough, aluminium,
    pyjamas, sceptical, judgement...).

    Left out because one spelling serves two words in British English:
    program/programme (a computer program is a program), practice/practise,
    license/licence, check/cheque, tire/tyre, curb/kerb, meter/metre (a gas
    meter), story/storey, draft/draught.
    """

    name = "en_gb"
    description = "American -> British English spelling"

    def __init__(self):
        super().__init__({us: (gb, (rule,)) for us, (gb, rule) in _table().items()})
