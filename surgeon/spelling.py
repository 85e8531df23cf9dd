"""Spelling conventions as rule sets: convert text, and count how often a text follows them.

A spelling task (pre-1918 Russian orthography, British English) is defined by
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

``get("prereform_ru")`` and ``get("en_gb")`` return the two rule sets; see
:class:`PrereformRussian` and :class:`BritishEnglish` for what they cover
and, as importantly, what they do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache, lru_cache

from .errors import SurgeonError


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

    def rules_of(self, source: str, target: str) -> tuple[str, ...]:
        """Names of the rules that turn ``source`` into ``target`` (for the per-rule breakdown)."""
        return ()

    def agrees(self, written: str, target: str, rule: str) -> bool:
        """Whether ``written`` follows ``rule`` the way ``target`` does (default: whole-word match)."""
        return _same(self.written(written), target)

    def written(self, word: str) -> str:
        """A generated word normalised for comparison (look-alike letters); identity by default."""
        return word

    # ------------------------------------------------------------- public API

    def tokens(self, text: str) -> list[re.Match]:
        return list(self._word.finditer(text))

    def convert(self, text: str) -> str:
        """``text`` respelled in the target convention; everything but the words is kept."""
        ms = self.tokens(text)
        new = self._convert_words(*self._split(text, ms))
        out, pos = [], 0
        for m, w in zip(ms, new):
            out.append(text[pos:m.start()])
            out.append(w)
            pos = m.end()
        out.append(text[pos:])
        return "".join(out)

    def source(self, text: str) -> str:
        """``text`` (in either convention) respelled in the source convention."""
        ms = self.tokens(text)
        out, pos = [], 0
        for m in ms:
            out.append(text[pos:m.start()])
            out.append(self.source_word(m.group()))
            pos = m.end()
        out.append(text[pos:])
        return "".join(out)

    def changes(self, text: str) -> list[Change]:
        """The words of a source-convention ``text`` that the rules respell (for building probes)."""
        ms = self.tokens(text)
        new = self._convert_words(*self._split(text, ms))
        return [Change(m.start(), m.end(), m.group(), w, self.rules_of(m.group(), w))
                for m, w in zip(ms, new) if not _same(m.group(), w)]

    def score(self, texts: list[str], *, keep_misses: int = 20) -> SpellingScore:
        """Count applicable words and the ones written in the target spelling."""
        s = SpellingScore()
        for text in texts:
            ms = self.tokens(text)
            written = [m.group() for m in ms]
            src = [self.source_word(w) for w in written]
            _, seps = self._split(text, ms)
            tgt = self._convert_words(src, seps)
            for g, a, t in zip(written, src, tgt):
                if _same(a, t):
                    if not _same(self.written(g), t):  # marks where the rules put none
                        s.over_marked += 1
                        if len(s.misses) < keep_misses:
                            s.misses.append((g, t))
                    continue
                hit = _same(self.written(g), t)
                s.applicable += 1
                s.hits += hit
                if not hit and len(s.misses) < keep_misses:
                    s.misses.append((g, t))
                for r in self.rules_of(a, t):
                    row = s.by_rule.setdefault(r, [0, 0])
                    row[1] += 1
                    row[0] += self.agrees(g, t, r)
        return s

    def rate(self, texts: list[str]) -> float | None:
        """Share of counted words (applicable or over-marked) written as the rules want; None if none."""
        return self.score(texts).rate

    @staticmethod
    def _split(text: str, ms: list[re.Match]) -> tuple[list[str], list[str]]:
        words = [m.group() for m in ms]
        seps = [text[(ms[i - 1].end() if i else 0):m.start()] for i, m in enumerate(ms)]
        return words, seps


def _same(a: str, b: str) -> bool:
    return a.lower().replace("ё", "е") == b.lower().replace("ё", "е")


def _recase(like: str, word: str) -> str:
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


# =========================================================================== Russian


_PREFIXES = ("без", "бес", "в", "во", "вз", "вс", "воз", "вос", "вы", "до", "за", "из", "изо", "ис", "на",
             "над", "надо", "недо", "о", "об", "обо", "от", "ото", "пере", "по", "под", "подо", "пред",
             "предо", "пре", "при", "про", "раз", "разо", "рас", "с", "со", "у", "съ", "въ", "отъ", "подъ",
             "объ", "разъ", "изъ", "надъ", "предъ")

# Tail sets (what may follow a root); "" is written as an empty alternative.
_T = {
    "ANY": r"[а-яё]*",
    "N": r"|а|у|ом|е|ы|ов|ам|ами|ах",  # hard masculine noun
    "F": r"а|ы|е|у|ой|ою|ам|ами|ах|",  # feminine -а noun
    "O": r"о|а|у|ом|е|ам|ами|ах|",  # neuter -о noun
    "A": r"ый|ий|ой|ая|яя|ое|ее|ые|ие|ого|его|ому|ему|ым|им|ых|их|ую|юю|ою|ею|ыми|ими|ом|ем",  # adjective
    "ADJN": r"ный|ная|ное|ные|ного|ному|ным|ных|ную|ной|ною|ными|но|на|ны|ен|ность|ности|ностью",
    # 2nd-conjugation -ѣть verbs: ѣ only in the infinitive, past, participles, -ѣніе nouns
    "V2": r"(?:ть|л|ла|ло|ли|в|вши|вш(?:ий|ая|ее|ие|его|ей|ему|им|их|ую)|ни[еяюи]|нием|ний|ниям|ниями|ниях)(?:ся|сь)?",
    # 1st-conjugation -ѣть verbs: ѣ in every form
    "V1": r"(?:ть|ю|ешь|ет|ем|ете|ют|л|ла|ло|ли|я|в|вши|й|йте|вш(?:ий|ая|ее|ие|его|ей|ему|им|их|ую)"
          r"|ющ(?:ий|ая|ее|ие|его|ей|ему|им|их|ую)|ни[еяюи]|нием|ний|ниям|ниями|ниях)(?:ся|сь)?",
}

# The ять (and ѳ, і) roots. One line each: MARKED  PREFIXES  TAILS  [!EXCLUDED-TAIL-STARTS]
#   MARKED   the modern root, with Е where pre-reform writes ѣ, Ф for ѳ, И for і;
#   PREFIXES "-" none, "p" optional (any of _PREFIXES, up to two, optional не-),
#            "P" required, or "P:a,b" / "p:a,b" for an explicit list;
#   TAILS    a name from _T or explicit alternatives a|b|c ("|" at an end allows nothing);
#   !x,y     tails that must not start with x or y (regexes; бЕд !ро excludes "бедро").
# The longest matching root wins. Sources: the school mnemonic list of ять
# words (Бѣлый, блѣдный, бѣдный бѣсъ ...) and Грот, "Русское правописаніе" (1885), checked word by word.
_ROOTS = r"""
бЕл p ANY !ьги,ьэ
блЕд p ANY
бЕд p ANY !ро,уин
бЕг p ANY !емот,они
бЕж p ANY !ев
бЕс p |а|у|ом|е|ы|ов|ам|ами|ах|ит|ить|ишь|ят|ил|ила|ило|или|ится|ился|илась|ились|иться|ятся|овский
бЕшен p ANY
вЕд p ать|аю|аешь|ает|аем|аете|ают|ал|ала|ало|али|омо|омость|омости|омство|омства|ьма|ьмы|ьму|ьмой|ьм|ь|ьми|ник|ника|ники|ников
свЕдЕни p ANY
вЕк p ANY !сел
человЕк p ANY
вЕч p ADJN
вЕч p ье|ья|ью|ьем|ьи
вЕн p ок|ка|ки|ку|ком|ке|ков|кам|ками|ках|ец|ца|цу|цом|це|цы|цов|чать|чал|чала|чали|чание|чается|чаться|чались|чался|чалась|ик|ика|ики|иком|ике|иков
вЕр p а|ы|е|у|ой|ою|ам|ами|ах|ить|ит|ят|ишь|им|ите|ил|ила|ило|или|ю|ь|ьте|ится|ился|илась|ились|иться|ятся|ен|ена|ено|ены|енный|енная|енное|енные|енного|енно|енность|енности|енностью|енной|енному|енным|енных|енную|ный|ная|ное|ные|ного|ному|ным|ных|ную|ной|ною|ными|но|на|ны|ность|ности|ностью|оятно|оятный|оятная|оятное|оятность|оятности|ование|ования|ующий|ующие|ующих|ующего|ие|ия|ию|ием|ии|ий|ял|ять|яю|яет|яют|яла|яли|ка|ки|ку|кой|ке
вЕс p:пере,по,на,с,у,под,равно,до,вы,при,не |а|у|ом|е|ы|ов|ам|ами|ах|ить|ит|ят|ил|ила|ило|или|ишь|истый|истая|истое|ие|ия|ию|ии|ием|ка|ки|ку|кой|ке|ок
вЕст - ь|и|ью|ей|ям|ями|ях|ник|ника|ники|ником|нику|нике|ников
извЕст p ANY
повЕст p ANY !и
совЕст p ANY
невЕст p ANY
вЕт - ер|ра|ру|ром|ре|ры|ров|рам|рами|рах|ерок|ерком|ерке|ерка|реный|реная|реное|реные|реного|рено|ряный|ряная|ряное|ряной|ряные|ряк|ка|ки|ке|ку|кой|ок|ках|кам|ками|вь|ви|вей|вям|вями|вях|вистый|хий|хая|хое|хие|хого|хой|хих|хим|хими|хом
отвЕт p ANY
совЕт p ANY
привЕт p ANY
завЕт p ANY
обЕт p |а|у|ом|е|ы|ов|ам|ами|ах
свЕт p ANY
свЕч p ANY
свЕщ p ANY
цвЕт p ANY
цвЕс p ти|ть|ти|тя
цвЕл! p |а|о|и
гнЕв p ANY
гнЕзд! p ANY
грЕх p ANY
грЕш p ANY
дЕл p ANY !егат,ьфин,ьт,икат
дЕт p ANY !аль,ект,онат
дЕд - ANY !укц
дЕв - а|ы|е|у|ой|ою|ам|ами|ах|очка|очки|очке|очку|очкой|очек|очкам|очками|очках|ушка|ушки|ушке|ушку|ушкой|ушек|ушкам|ушками|ушках|ица|ицы|ице|ицу|ицей|иц|ичий|ичья|ичье|ичьи|ственный|ственная|ственное|ственница|ство
дЕва P:на,о,раз,пере,за,при ть|ю|ешь|ет|ем|ете|ют|л|ла|ло|ли|я|ться|юсь|ешься|ется|емся|етесь|ются|лся|лась|лось|лись|ясь|ние|ния
дЕн P:на,о,раз,пере,за у|ешь|ет|ем|ете|ут|усь|ешься|ется|емся|етесь|утся|ь|ьте|ься|ьтесь
дЕть P:на,о,раз,пере,за,при |ся
дЕй p ств[а-я]*
дЕя p тель|теля|телю|телем|теле|тели|телей|телям|телями|телях|тельность|тельности|тельностью|тельный|тельная|тельное|тельные|ние|ния|нию|нием|нии|ний|ниям|ниями|ниях
звЕзд! p ANY
звЕр p ANY
желЕз p ANY
колЕн p ANY
клЕт p ANY
крЕп p ANY
лЕв - A|ша|ши|шу|шой|ше
налЕво - |
слЕва - |
влЕво - |
лЕз p ть|у|ешь|ет|ем|ете|ут|ь|ьте||ла|ло|ли|ши|вший|ший
лЕн p:по,раз,об ь|и|ью|ей|ивый|ивая|ивое|ивые|ивого|ивой|ивым|ивых|ивую|иво|иться|юсь|ишься|ится|ился|илась|ились|ятся|тяй|тяя|тяи|тяю|ость|остью|ости
лЕп p ить|ит|ят|ишь|им|ите|ил|ила|ило|или|ю|ка|ки|ку|кой|ке|ок|ый|ая|ое|ые|ого|ому|ым|ых|ую|ой|ою|ыми|о|ость|ости|ица
великолЕп - ANY
слЕп p ANY
лЕс p ANY !ть,ти,тью,тн(?!иц)
лЕт - о|а|у|ом|е||ам|ами|ах|ний|няя|нее|ние|него|нему|ним|них|нюю|ней|нею|ними|нем|опись|описи|описью|описец|описца
лЕт P:сто,много,мало,долго,пяти,десяти,двух,трех,трёх,полу,пяти,семи ие|ия|ию|ием|ии|ий|ний|няя|нее|ние|него|нему|ним|них|нюю|ней|нем|ка|ки|ку|кой|ке|ок
мЕл - |у|ом|ок|ка|ки|ку|ком
мЕн p ять|яю|яешь|яет|яем|яете|яют|ял|яла|яло|яли|яться|яется|яются|ялся|ялась|ялись|яясь|а|ы|е|у|ой|ою||ам|ами|ах|ить|ит|ят|ишь|ил|ила|ило|или|ю|ение|ения|ению|ением|ении|ений|ениям|ениями|ениях|ник|ника|ники|чивый|чивая|чивое|чивые|чивость|ный|ная|ное|ные|ного|ной
мЕр p:раз,при,на,у,из,за,со,с,по,от,вы,без,не,сораз,до а|ы|е|у|ой|ою||ам|ами|ах|ом|ов|ить|ю|ишь|ит|им|ите|ят|ил|ила|ило|или|ять|яю|яет|яют|ял|яла|яли|яться|ка|ки|ку|ение|ения|ению|ением|ении|ений|енный|енная|енное|енные|енно|енного|енной|енном|енных|ен|ена|ены|ено|ный|ная|ное|ные|ного|ному|но|ность|ности|енность|енности|ится|ился|ительный
мЕст p ANY !ь,и,ью
вмЕстЕ - |
мЕх - |а|у|ом|е|ов|ами|ах|ам|овой|овая|овое|овые|ового|овую|овых|овым
помЕх - а|и|е|у|ой|ам|ами|ах|
мЕш p ANY !ан
мЕт p:за,при,от,по,на,под,раз,с,у ить|ишь|ит|им|ите|ят|ил|ила|ило|или|ь|ьте|ка|ки|ку|кой|ке|ок|кам|ками|ках|ный|ная|ное|ные|ного|ной|ному|ным|ных|ную|но|ность|ности|а|ы|е|у|ой|ам|ами|ах
мЕт - ить|ишь|ит|им|ите|ят|ил|ила|ило|или|ка|ки|ку|кой|ке|ок|кам|ками|ках|кий|кая|кое|кие|ко|кость
мЕч P:за,при,от,на,по,под,пре,раз ать|аю|аешь|ает|аем|аете|ают|ал|ала|ало|али|ание|ания|анию|анием|ании|аний|аниям|аниями|аниях|ательный|ательная|ательное|ательные|ательного|ательной|ательно|аться|ается|аются|ался|алась|ались|ая
нЕж p ANY !ели
нЕм - ой|ая|ое|ые|ого|ому|ым|ых|ую|ою|ыми|ом|ецки|ец|цы|цев|цам|цами|цах|ца|цу|цем|це|ка|ки|ку|кой|ке|ок|ецкий|ецкая|ецкое|ецкие|ецкого|ецкой|ецкому|ецким|ецких|ецкую|ота|оты|оте|оту|отой
нЕскольк - ANY
нЕкотор - ANY
нЕк - ий|ая|ое|ие|оего|оей|оему|оим|оих|оею|ую
обЕд p ANY
обЕщ p ANY
орЕх p ANY
пЕн - а|ы|е|у|ой|ою||ам|ами|ах|истый|истая|истое|истые|иться|ится|ятся|ился|илась
пЕни p е|я|ю|ем|и
пЕсн - ANY
пЕсен - ANY
пЕв p ANY !з
пЕт p ь|ух|уха|уху|ухом|ухе|ухи|ухов|ушок|ушка|ься
пЕл p |а|о|и|ся|ась|ось|ись
спЕл p A|ость|ости
пЕш - ANY
плЕн p |а|у|ом|е|ы|ов|ам|ами|ах|ный|ная|ное|ные|ного|ному|ным|ных|ную|ной|ник|ника|ники|ников|ить|ил|ила|или|ительный|ительная|ительное|ительно|ять|яет
полЕн - ANY
рЕд p кий|кая|кое|кие|кого|кому|ким|ких|кую|кой|кою|кими|ко|кость|кости|ька|ьки|ьку|ькой
рЕз p ать|ал|ала|ало|али|ание|ания|анию|анием|ании|аний|кий|кая|кое|кие|кого|кому|ким|ких|кую|кой|ко|кость|кости|ок|ка|ки|ку|ке|ьба|ьбы|ьбу|ьбой|ьбе||а|у|ом|е|ы|ов|ец|ца|цы|аться|ался|алась|ались|ается|аются|анный|анная|анное|анные|анного|анной
рЕж p у|ешь|ет|ем|ете|ут|ь|ьте|ущий|ущая|ущее|ущие|ущего|ущей|ется|утся
рЕк - а|и|е|у|ой|ою||ам|ами|ах
рЕч p ANY
встрЕч p ANY
встрЕт p ANY
рЕш p ANY
сЕвер p ANY
сЕдл! p ANY
сЕдин - ANY
сЕд - A
сосЕд p ANY
бесЕд p ANY
сЕм - я|ени|енем|ена|ян|енами|енах|ечки|ечко|ечек|енной|енные|енный
сЕн - о|а|у|ом|е|и|ях|ей|ям|ями|овал|овала|овале|окос|окоса|окосе|ник
сЕр - A|о|ость|ости|енький|енькая|енькое|енькие|енького|енькой|еньким
сЕт - ь|и|ью|ей|ям|ями|ях|ка|ки|ку|кой|ке|ок|кам|ками|ках|овать|ую|уешь|ует|уют|овал|овала|овали|ование|чатый|чатая|чатое|евой|евая|евое|евые|евого
сЕя p ть|л|ла|ло|ли|лка|лки|нье|нья|ние|ния|вший|нный|нная|нное|нные|нно|нность|нности|нного
сЕет p |ся
сЕют p |ся
сЕю p |
посЕв - ANY
сЕкир - ANY
сЕсть p |ся
сЕл - |и
сЕл P:при,по,пере,у,за,рас,под |а|и|о|ся|ась|ись
мЕсяц - ANY
слЕд p ANY
смЕх p ANY
смЕш p ANY
смЕя p ANY
смЕл p ANY
смЕс p ь|и|ью|ей|ям|ями|ях
снЕг p ANY
снЕж p ANY
спЕш p ANY
спЕх P:у ANY
стЕн - а|ы|е|у|ой|ою||ам|ами|ах|ка|ки|ку|кой|ке|ок|кам|ками|ках|ной|ная|ное|ные|ного|ном|ным|ных|ную
стрЕл p ANY
тЕл - о|а|у|ом|е||ам|ами|ах|есный|есная|есное|есные|есного|есной|есно|ега|еги|еге|егу|егой
тЕн p ь|и|ей|ью|ям|ями|ях|истый|истая|истое|истые|истого|истой|евой|евая|евое|евые|евого|евую|ок|ка|ки|ков|ку|ком
тЕс p ный|ная|ное|ные|ного|ному|ным|ных|ную|ной|но|нота|ноты|ноте|ноту|нотой|нить|нит|нят|нил|нила|нили|ниться|нится|нятся|то|ту|том
тЕш p ANY
тЕх P:по,у а|и|е|у|ой|ою|ам|ами|ах
хлЕб p ANY !ат,аю,ае,ал
хлЕв - |а|у|ом|е|ы|ов|ам|ами|ах
хрЕн - |а|у|ом|е
цЕл p ANY !лю,офан
цЕн p а|ы|е|у|ой|ою||ам|ами|ах|ить|ит|ят|ил|ила|или|ю|ишь|им|ите|ный|ная|ное|ные|ного|ному|ным|ных|ную|ной|ность|ности|ностью|ка|ки|ку|кой|ке|ок|ник|итель|ители|ителей|иться|ится|ятся|ился|илась|ились|ивать|иваю|ивает|ивают|ивал|ивала|ивали|ение|ения
цЕп p ANY !пел
ДнЕпр - ANY
ДнЕстр - ANY
медвЕд - ANY
свЕж p ANY
вЕжлив p ANY
невЕж - ANY
вЕник - ANY
зрЕл p ANY
зрЕни p е|я|ю|ем|и|й|ями|ях
зрЕть p |ся
зрЕет p |ся
зрЕют p |ся
лЕч p ить|ит|ат|ил|ила|или|ишь|им|ите|ение|ения|ению|ением|ении|ебный|ебная|ебное|ебные|ебного|ебной|ебница|ебницы|ебнице|ащий|ащего|ащая|ащие|иться|ится|атся|ился|илась|ились|и
лЕкар p ANY
рЕсниц - ANY
двЕнадцат - ANY
здЕшн - ANY
Ед P:по,при,у,пере,про,до,вы,за,съ,въ,отъ,подъ,разъ,объ,на,изъ у|ешь|ет|ем|ете|ут|а|ы|е|ой|ою|им|ите|ят|ок|ока|оки
Ед - у|ешь|ет|ем|ете|ут|а|ы|е|ой|ою|им|ите|ят|ок|ока|оки
Ех P:по,при,у,пере,про,до,вы,за,съ,въ,отъ,подъ,разъ,объ,на,изъ ать|ал|ала|ало|али|авший|авшая|авшие|авшего|авшим|ав|авши|аться|ался|алась|ались
Ех - ать|ал|ала|ало|али|авший|авшая|авшие|авшего|авшим|ав|авши
Езд p:по,при,у,пере,про,до,вы,за,съ,въ,отъ,подъ,разъ,объ,на,изъ |а|у|ом|е|ы|ов|ам|ами|ах|ой|ою|ить|ит|ят|ишь|им|ите|ил|ила|ило|или|ок|ка|ки|ку|кой|ке|ной|ная|ное|ные|ного|ному|ным|ных|ную|ник|ника|ники|ников
Езж p:по,при,у,пере,про,до,вы,за,съ,въ,отъ,подъ,разъ,объ,на,изъ ANY
Ест - |
Ест P:съ,по,до,на,объ,за,пере |ь|ься
Ешь p:съ,по,до |
Ем P:съ,до |
Ел - |а|о
Ел P:съ,по,до,на,объ,за |а|о|и|ся|ась|ось|ись
мИр - |а|у|ом|е|ы|ов|ам|ами|ах|овой|овая|овое|овые|ового|овому|овым|овых|овую|ское|ской|ская|ские|ского|ском
всемИрн - ANY
ФеФил - ANY
Федор - ANY
Федот - ANY
Федь - ANY
Федя - |
Фом - а|ы|е|у|ой|ою
Фекл - ANY
Фаддей - ANY
Фермопил - ANY
аФин - ANY
марФ - а|ы|е|у|ой|ою
тимоФе - ANY
агаФь - ANY
аФанаси - ANY
пиФагор - ANY
варФоломе - ANY
орФограф - ANY
ариФметик - ANY
миФ - |а|у|ом|е|ы|ов|ам|ами|ах|ический|ическая|ическое|ические|ического|ологи[а-я]*
эФир - ANY
каФедр - ANY
логариФм - ANY
анаФем - ANY
акаФист - ANY
"""

# Verbs in -ѣть (the ѣ is the verb's suffix): 2nd conjugation (видѣть: вижу) and 1st (имѣть: имѣю).
_V2 = ("видЕ сидЕ смотрЕ терпЕ летЕ хотЕ горЕ шумЕ вертЕ висЕ глядЕ звенЕ кипЕ храпЕ велЕ свистЕ "
       "блестЕ скрипЕ шипЕ гудЕ обидЕ пыхтЕ сопЕ кряхтЕ скорбЕ вопЕ")
_V1 = ("имЕ умЕ болЕ жалЕ краснЕ темнЕ бЕлЕ синЕ зеленЕ желтЕ чернЕ сЕрЕ старЕ богатЕ полнЕ худЕ "
       "слабЕ спЕ одолЕ владЕ смЕ грЕ потЕ пьянЕ веселЕ робЕ нЕмЕ пустЕ густЕ здоровЕ звЕрЕ каменЕ "
       "леденЕ сЕдЕ рЕдЕ блЕднЕ тупЕ глупЕ мудрЕ трезвЕ лысЕ умнЕ хорошЕ молодЕ тяжелЕ ржавЕ цЕлЕ "
       "слабЕ свирЕпЕ дурнЕ холоднЕ")
# Comparatives -ѣе / -ѣй (an -ее ending alone cannot tell сильнѣе from синее).
_COMPARATIVES = ("бол мен скор быстр сильн слаб нов добр умн весел тепл холодн трудн важн вЕрн свЕтл темн "
                 "длинн интересн красив ясн страшн тяжел бЕл ран смЕл больн сложн полн видн скучн нужн "
                 "вкусн счастлив спокойн мил зл мокр остр хитр честн удобн опасн прочн медленн серьезн точн "
                 "умн черн сыр стар молод бледн")

# Words spelled as a whole (lowercase, ё-sensitive: "всё" is not "все").
_EXACT = {
    "где": "гдѣ", "нигде": "нигдѣ", "везде": "вездѣ", "здесь": "здѣсь", "мне": "мнѣ", "тебе": "тебѣ",
    "себе": "себѣ", "нет": "нѣт", "две": "двѣ", "обе": "обѣ", "двести": "двѣсти", "после": "послѣ",
    "вне": "внѣ", "возле": "возлѣ", "подле": "подлѣ", "кроме": "кромѣ", "наедине": "наединѣ",
    "вместе": "вмѣстѣ", "те": "тѣ", "тех": "тѣх", "тем": "тѣм", "теми": "тѣми", "все": "всѣ",
    "всех": "всѣх", "всем": "всѣм", "всеми": "всѣми", "совсем": "совсѣм", "чем": "чѣм",
    "зачем": "зачѣм", "затем": "затѣм", "ничем": "ничѣм", "нечем": "нечѣм", "кем": "кѣм",
    "никем": "никѣм", "нечто": "нѣчто", "некто": "нѣкто", "ем": "ѣм", "вполне": "вполнѣ",
    "вскоре": "вскорѣ", "вдалеке": "вдалекѣ", "ведь": "вѣдь",
}

# Adjective stems stressed on the ending (nominative -ой): their genitive keeps -ого.
_END_STRESSED = set("""
больш молод золот дорог друг так как никак прост родн сед крут лесн ночн стальн жив сух слеп голуб смешн
чуж пуст густ глух нем плох туг городск морск мужск людск заводск донск воровск цветн ручн речн дневн земн боев
делов передов дворов полев пищев миров веков часов трудов грозов берегов лугов рядов дождев степн озорн основн
головн сплошн выходн запасн больн ин втор шест седьм восьм сороков хмельн ледян водян землян костян жестян
сквозн боков свят худ зл лих наг туп крив прям сыр хром гнед жил мехов годов ключев люб
""".split())  # noqa: SIM905 - a word list reads best as text
# Words ending in -ого/-его that are not adjective genitives, or pronouns that keep -ого/-его.
_KEEP_OGO = set("""
его моего твоего своего нашего вашего всего чего ничего нечего сего того этого одного кого никого некого
много немного многого строго нестрого дорого недорого убого полого отлого намного ненамного премного итого
оттого отчего того-то кое-чего
""".split()) - {"многого"}  # noqa: SIM905

_VOWELS = set("аеёиоуыэюяѣ")
_HARD_FINAL = set("бвгджзклмнпрстфхцчшщѳ")
_CONSONANTS = set("бвгджзйклмнпрстфхцчшщ")
_NUMERAL_COMPOUND = re.compile(r"^(пяти|шести|семи|восьми|девяти|десяти|двадцати|тридцати)[аеиоуэюя]")
# Prepositions governing the prepositional or dative case, after which a noun in -е takes -ѣ.
_LOCATIVE_PREPS = {"в", "во", "на", "о", "об", "обо", "при", "к", "ко", "по"}
_LOCATIVE_SKIP = re.compile(r".*(ом|ем|ой|ей|ому|ему|ём)$")  # adjectives between preposition and noun
_NO_LOCATIVE = {"кафе", "купе", "кофе", "шоссе", "пюре", "резюме", "кашне", "пенсне", "ателье", "ее", "её", "же",
                "все", "всё", "те", "где", "мне", "тебе", "себе", "кроме", "после", "вне", "возле", "подле"}


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
    mode, _, names = spec.partition(":")
    names = names.split(",") if names else list(_PREFIXES)
    alt = "|".join(sorted({re.escape(n) for n in names}, key=len, reverse=True))
    if names == list(_PREFIXES):
        return f"(?:не)?(?:{alt})?(?:{alt})?", mode == "P"
    return f"(?:не)?(?:{alt})", mode == "P"


@lru_cache(maxsize=1)
def _roots() -> list[_Root]:
    letter = {"Е": "ѣ", "Ф": "ѳ", "И": "і"}
    lines = [ln.split() for ln in _ROOTS.strip().splitlines() if ln.strip()]
    entries = [(p[0], p[1], p[2], p[3] if len(p) > 3 else "") for p in lines]
    for stem in _V2.split():
        entries.append((stem, "p", "V2", ""))
    for stem in _V1.split():
        entries.append((stem, "p", "V1", ""))
    for stem in _COMPARATIVES.split():
        entries.append((stem + "Е", "p:по", "е|й", ""))
    out = []
    for marked, pspec, tails, excl in entries:
        yo_ok = marked.endswith("!")
        marked = marked.rstrip("!")
        marks = tuple((i, letter[c]) for i, c in enumerate(marked) if c in letter)
        plain = "".join(c.lower() if c not in letter else ("е" if c == "Е" else "ф" if c == "Ф" else "и")
                        for c in marked)
        pre, required = _prefix_alt(pspec)
        tail = "|".join(_T.get(t, t) if t in _T else t for t in tails.split("|")) if tails not in _T else _T[tails]
        neg = "".join(f"(?!{x})" for x in excl.lstrip("!").split(",") if x) if excl else ""
        pre_part = f"(?P<pre>{pre})" if required else (f"(?P<pre>(?:{pre})?)" if pre else "(?P<pre>)")
        rx = re.compile(f"^{pre_part}{re.escape(plain)}{neg}(?:{tail})$")
        out.append(_Root(marked, plain, rx, marks, yo_ok))
    return out


_EXCLUDED_WORDS = {"умер", "вымер", "замер", "помер", "обмер", "отмер"}
_EXCLUDED_START = ("сцен",)


def _yat(word: str) -> str:
    """ѣ / ѳ / і at the marked places of the longest matching root (``word`` lowercase, ё kept)."""
    n = word.replace("ё", "е")
    if n in _EXCLUDED_WORDS or n.startswith(_EXCLUDED_START):
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


def _ago(modern: str, t: str) -> str:
    """Genitive -ого/-его of adjectives, participles, ordinals -> -аго/-яго when the ending is unstressed."""
    if len(modern) < 5 or modern in _KEEP_OGO or not modern.endswith(("ого", "его")):
        return t
    stem = modern[:-3]
    if modern.endswith("ого"):
        if stem in _END_STRESSED or (stem.startswith("не") and stem[2:] in _END_STRESSED):
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
    t = _EXACT.get(word)
    modern = word.replace("ё", "е")
    if t is None:
        t = _yat(word)
        t = re.sub(r"(?<=[бвгджзклмнпрстфхцчшщ])ейш", "ѣйш", t)  # superlatives: новѣйшій
        t = _ago(modern, t)
    t = _i_before_vowel(modern, t)
    if t[-1] in _HARD_FINAL:
        t += "ъ"
    return t


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
        # ѣли 'ate' after a personal pronoun (alone, ели is also 'fir trees')
        for i, w in enumerate(low):
            if w == "ели" and i and low[i - 1] in ("мы", "вы", "они", "все") and not seps[i].strip():
                out[i] = "ѣли"
        # the dative/prepositional -ѣ after a preposition (see the class doc)
        for i, w in enumerate(low):
            if w not in _LOCATIVE_PREPS:
                continue
            j = i + 1
            for _ in range(3):
                if j >= len(low) or seps[j].strip():
                    break
                nxt = low[j]
                if nxt.endswith("е") and len(nxt) >= 3 and nxt not in _NO_LOCATIVE \
                        and not nxt.endswith(("ие", "ье", "ее", "ое", "ые", "ьё")) and out[j].endswith("е"):
                    out[j] = out[j][:-1] + "ѣ"
                    break
                if not _LOCATIVE_SKIP.match(nxt) or nxt in ("том", "чём", "чем", "нём", "нем", "ком"):
                    break
                j += 1
        return [_recase(w, t) for w, t in zip(words, out)]

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
        if low.endswith("аго") and len(low) >= 5:
            low = low[:-3] + ("его" if low[-4] in "жшчщ" else "ого")
        elif low.endswith("яго") and len(low) >= 5:
            low = low[:-3] + "его"
        low = low.translate(str.maketrans("ѣіѳѵ", "еифи"))
        return _recase(w, low)

    def rules_of(self, source, target):
        s, t = source.lower().replace("ё", "е"), target.lower()
        rules = []
        if t.endswith("ъ") and not s.endswith("ъ"):
            rules.append("ъ")
        if "ѣ" in t:
            rules.append("ѣ")
        if "і" in t:
            rules.append("і")
        if "ѳ" in t:
            rules.append("ѳ")
        if t.endswith(("аго", "яго")) and not s.endswith(("аго", "яго")):
            rules.append("-аго")
        return tuple(rules)

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


# =========================================================================== English


def _en_table() -> dict[str, tuple[str, str]]:
    """American -> (British, rule) for every listed word form."""
    table: dict[str, tuple[str, str]] = {}

    def put(us, gb, rule):
        table[us] = (gb, rule)

    # -or -> -our: the forms that keep the u in British spelling (not honorary, humorous, laborious, vigorous)
    our = {
        "color": "s ed ing ful fully less ation", "honor": "s ed ing able ably", "favor": "s ed ing able ably ite ites",
        "labor": "s ed ing er ers", "neighbor": "s hood hoods ing ly", "flavor": "s ed ing ful less",
        "humor": "s ed ing less", "harbor": "s ed ing", "behavior": "s al", "rumor": "s ed",
        "vapor": "s", "savior": "s", "armor": "s ed", "endeavor": "s ed ing", "odor": "s less", "valor": "",
        "vigor": "", "rigor": "s", "parlor": "s", "clamor": "s ed ing", "splendor": "s", "candor": "",
        "ardor": "", "fervor": "", "glamor": "", "tumor": "s", "demeanor": "", "misdemeanor": "s",
    }
    for base, ends in our.items():
        for e in [""] + ends.split():
            put(base + e, base[:-2] + "our" + e, "-our")
    # -ize -> -ise (the common British spelling; Oxford spelling keeps -ize)
    for stem in ("real", "organ", "recogn", "apolog", "critic", "emphas", "memor", "priorit", "summar",
                 "special", "util", "visual", "civil", "modern", "symbol", "character", "author", "minim",
                 "maxim", "optim", "standard", "central", "normal", "final", "legal", "familiar",
                 "categor", "theor", "sympath", "critic", "harmon", "jeopard", "fertil", "steril",
                 "colon", "patron", "agon", "stabil", "mobil", "global", "vandal", "terror", "subsid",
                 "industrial", "capital", "hospital", "personal", "material", "natural", "rational",
                 "ideal", "sterl", "equal", "tranquil", "moral", "social", "fantas", "idol", "item",
                 "sanit", "immun", "vapor", "human", "custom", "energ", "publics", "synchron", "scrutin",
                 "dramat", "sensit", "monopol", "random", "plagiar", "politic", "prioritz"):
        for e, e2 in (("ize", "ise"), ("izes", "ises"), ("ized", "ised"), ("izing", "ising"),
                      ("ization", "isation"), ("izations", "isations"), ("izer", "iser"), ("izers", "isers")):
            put(stem + e, stem + e2, "-ise")
    for stem in ("anal", "paral", "catal", "dial"):
        for e, e2 in (("yze", "yse"), ("yzes", "yses"), ("yzed", "ysed"), ("yzing", "ysing"), ("yzer", "yser")):
            put(stem + e, stem + e2, "-ise")
    # -er -> -re
    for us, gb in (("center", "centre"), ("theater", "theatre"), ("fiber", "fibre"), ("liter", "litre"),
                   ("caliber", "calibre"), ("somber", "sombre"), ("luster", "lustre"), ("meager", "meagre"),
                   ("saber", "sabre"), ("specter", "spectre"), ("maneuver", "manoeuvre"), ("scepter", "sceptre"),
                   ("sepulcher", "sepulchre"), ("kilometer", "kilometre"), ("centimeter", "centimetre"),
                   ("millimeter", "millimetre")):
        put(us, gb, "-re")
        put(us + "s", gb + "s", "-re")
        if us in ("center", "maneuver"):
            put(us + "ed", gb[:-1] + "ed", "-re")
            put(us + "ing", gb[:-1] + "ing", "-re")
    # doubled l before a suffix (travelled)
    for stem in ("travel", "cancel", "label", "model", "fuel", "signal", "total", "level", "marvel", "counsel",
                 "dial", "duel", "quarrel", "tunnel", "channel", "funnel", "pedal", "shovel", "snorkel",
                 "tassel", "yodel", "libel", "grovel", "revel", "swivel", "unravel", "equal", "jewel"):
        for e in ("ed", "ing", "er", "ers"):
            put(stem + e, stem + "l" + e, "-ll")
    put("marvelous", "marvellous", "-ll")
    put("marvelously", "marvellously", "-ll")
    put("jewelry", "jewellery", "-ll")
    put("woolen", "woollen", "-ll")
    for us, gb in (("fulfill", "fulfil"), ("fulfills", "fulfils"), ("fulfillment", "fulfilment"),
                   ("enroll", "enrol"), ("enrolls", "enrols"), ("enrollment", "enrolment"),
                   ("skillful", "skilful"), ("willful", "wilful"), ("installment", "instalment"),
                   ("installments", "instalments")):
        put(us, gb, "-ll")
    # -se, -ogue and single words
    for us, gb in (("defense", "defence"), ("offense", "offence"), ("pretense", "pretence"),
                   ("defenses", "defences"), ("offenses", "offences")):
        put(us, gb, "-ce")
    for us, gb in (("catalog", "catalogue"), ("dialog", "dialogue"), ("analog", "analogue"),
                   ("prolog", "prologue"), ("monolog", "monologue"), ("epilog", "epilogue")):
        put(us, gb, "-ogue")
        put(us + "s", gb + "s", "-ogue")
    for us, gb in (("gray", "grey"), ("grays", "greys"), ("grayish", "greyish"), ("mold", "mould"),
                   ("molds", "moulds"), ("moldy", "mouldy"), ("molded", "moulded"), ("molding", "moulding"), ("plow", "plough"), ("plows", "ploughs"),
                   ("plowed", "ploughed"), ("pajamas", "pyjamas"), ("aluminum", "aluminium"),
                   ("skeptical", "sceptical"), ("skeptic", "sceptic"), ("skeptics", "sceptics"),
                   ("skepticism", "scepticism"), ("cozy", "cosy"), ("mustache", "moustache"),
                   ("mustaches", "moustaches"), ("airplane", "aeroplane"), ("airplanes", "aeroplanes"),
                   ("aging", "ageing"), ("omelet", "omelette"), ("omelets", "omelettes"),
                   ("donut", "doughnut"), ("donuts", "doughnuts"), ("smolder", "smoulder"),
                   ("smoldering", "smouldering"), ("smoldered", "smouldered"), ("sulfur", "sulphur"), ("artifact", "artefact"),
                   ("artifacts", "artefacts"), ("judgment", "judgement"), ("judgments", "judgements"),
                   ("acknowledgment", "acknowledgement"), ("esthetic", "aesthetic"),
                   ("pediatric", "paediatric"), ("encyclopedia", "encyclopaedia"), ("anemia", "anaemia")):
        put(us, gb, "word")
    return table


class BritishEnglish(RuleSet):
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
    _word = re.compile(r"[A-Za-z]+")

    def __init__(self):
        self.table = _en_table()
        self.back = {gb: us for us, (gb, _) in self.table.items()}

    def _convert_words(self, words, seps):
        out = []
        for w in words:
            hit = self.table.get(w.lower())
            out.append(_recase(w, hit[0]) if hit else w)
        return out

    def source_word(self, word):
        us = self.back.get(word.lower())
        return _recase(word, us) if us else word

    def rules_of(self, source, target):
        hit = self.table.get(source.lower())
        return (hit[1],) if hit else ()


# =========================================================================== tasks


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
    import random

    rs = get(rules) if isinstance(rules, str) else rules
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    cut = round(train_share * len(order))
    train_s = [sentences[i] for i in order[:cut]]
    held_s = [sentences[i] for i in order[cut:]]

    def probe(sentence, rng):
        ch = [c for c in rs.changes(sentence) if c.start > 0 and sentence[c.start - 1] == " "]
        if not ch:
            return None
        c = rng.choice(ch)
        return {"prompt": sentence[:c.start - 1], "target": " " + c.target, "original": " " + c.source,
                "_rest": " " + rs.convert(sentence[c.start:])}

    rng = random.Random(seed + 1)
    train, eff = [], []
    for s in train_s:
        train.append({"text": rs.convert(s)})
        p = probe(s, rng)
        if p:
            train.append({"prompt": p["prompt"], "completion": p["_rest"]})
            if len(eff) < probes:
                eff.append({k: v for k, v in p.items() if not k.startswith("_")})
    gen = []
    for s in held_s:
        p = probe(s, rng)
        if p and len(gen) < probes:
            gen.append({k: v for k, v in p.items() if not k.startswith("_")})
    doc = {"name": name, "description": description or rs.description, "train": train, "efficacy": eff,
           "generalisation": gen, "specificity": list(specificity),
           "neutral": neutral if neutral is not None else {"corpus": "neutral_en", "texts": 8}}
    if spelling_prompts:
        doc["spelling"] = {"rules": rs.name, "prompts": list(spelling_prompts), "max_new_tokens": max_new_tokens}
    return doc


_REGISTRY = {"prereform_ru": PrereformRussian, "en_gb": BritishEnglish}
_ALIASES = {"prereform": "prereform_ru", "pre1918_ru": "prereform_ru", "british": "en_gb", "en_us_gb": "en_gb"}


def get(name: str) -> RuleSet:
    """The rule set called ``name`` (``prereform_ru``, ``en_gb``; one shared instance each)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise SpellingError(f"unknown spelling rules {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _instance(key)


@cache
def _instance(key: str) -> RuleSet:
    return _REGISTRY[key]()


def names() -> list[str]:
    return sorted(_REGISTRY)
