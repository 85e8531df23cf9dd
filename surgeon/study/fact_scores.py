"""Batched scorers for fact sets with thousands of probes: greedy answers, teacher-forced preference, fluency.

They are batched versions of the CounterFact comparisons of :mod:`surgeon.study.measure` (same definitions: the
answer with the higher mean log-probability per token wins; a generated answer counts under
:func:`surgeon.study.generate.generated_success`'s rule), needed because a 1,000-fact task has ~10,000 probes.
"""

from __future__ import annotations

from surgeon.data import neutral_paragraphs
from surgeon.study import generate
from surgeon.study.generate import ANSWER_TOKENS, FREE_TOKENS, degeneration, says


def answer_logprobs(rt, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[tuple[float, int]]:
    """(Σ log P(answer tokens | prompt), number of answer tokens) per (prompt, answer), batched."""
    lp = rt.continuation_logprob([p for p, _ in pairs], [a for _, a in pairs], batch_size=batch_size)
    n = [len(rt.tokenizer(a, add_special_tokens=False)["input_ids"]) for _, a in pairs]
    return [(float(x), k) for x, k in zip(lp, n)]


def prefers(rt, rows: list[tuple[str, str, str]], batch_size: int = 64) -> list[bool]:
    """For each (prompt, a, b): does the model now prefer a over b (mean log-probability per token)?"""
    pairs = [(p, a) for p, a, _ in rows] + [(p, b) for p, _, b in rows]
    lp = answer_logprobs(rt, pairs, batch_size)
    n = len(rows)
    return [lp[i][0] / lp[i][1] > lp[n + i][0] / lp[n + i][1] for i in range(n)]


def generated_success(rt, rows: list[tuple[str, str, str]], max_new_tokens: int = ANSWER_TOKENS,
                      batch_size: int = 64) -> list[bool]:
    """:func:`surgeon.study.generate.generated_success`'s rule (the "Mirage" protocol, arXiv 2502.11177) on
    batched generations: for each (prompt, target, original), the greedy continuation contains the target,
    not the original answer, and is not degenerate."""
    gen = rt.generate([p for p, _, _ in rows], max_new_tokens, batch_size=batch_size)
    return [says(g, t) and not says(g, o) and degeneration(g) is None for g, (_, t, o) in zip(gen, rows)]


def fluency(rt, prompts: list[str], max_new_tokens: int = FREE_TOKENS) -> tuple[float, list[str]]:
    """ROME's n-gram entropy (:func:`surgeon.study.generate.fluency`) of batched greedy continuations."""
    gen = rt.generate(prompts, max_new_tokens, batch_size=64)
    return generate.fluency(gen), gen


def fluency_prompts(n: int = 16) -> list[str]:
    """Free-generation prompts from the held-out neutral paragraphs (:func:`surgeon.study.generate.neutral_prompts`)."""
    return generate.neutral_prompts(neutral_paragraphs("eval"), n)
