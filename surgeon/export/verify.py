"""Does the GGUF say what the checkpoint says? llama.cpp's greedy tokens against transformers'.

llama.cpp is fed transformers' greedy path and must pick the same token at every step. Where
transformers' top two logits are within ``TIE`` (0.01 logits) either pick counts — f16 rounding
breaks an exact tie either way — and the step is listed in ``ties`` (measured: SmolLM2's "The three
primary colours are" has one, a margin of 0.001, at step 7). The tokenizers must also give the same
ids for each prompt (added tokens included).

f16 / bf16: every step must agree. q8_0: each prompt's first step must agree, and over ~512 tokens
of held-out neutral text the top-1 next token must agree on ≥ 95 % of the positions where
transformers' choice is decided (its top-1 leads by ≥ 0.5 logits), and on ≥ 90 % of all positions.
Why not 95 % of all positions: q8_0 also rounds the activations to 8 bits in each matmul, and near
ties flip — measured on SmolLM2 over 1039 tokens, 0.945 of all positions, every flip at a lead
< 0.33 logits, 1.000 of decided ones (f16: 0.999 of all). A broken conversion (tokenizer, norm
offsets, rope) disagrees where the choice is decided.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from surgeon.data import neutral_paragraphs
from surgeon.export.llama_cpp import GGUFError, llama_follow, llama_greedy, llama_logits, open_llama
from surgeon.runtime import load

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, there was a little",
    "The three primary colours are",
)
TIE = 0.01  # logits: transformers' top two closer than this are a tie that rounding may break either way
Q8_AGREEMENT = 0.95  # q8_0: top-1 agreement on neutral text where transformers' choice is decided ...
Q8_DECIDED = 0.5  # ... by at least this many logits over its runner-up
Q8_FLOOR = 0.90  # q8_0: top-1 agreement over every position, near ties included
Q8_TOKENS = 512  # q8_0: neutral-text positions compared


@dataclass
class PromptCheck:
    prompt: str
    hf: str  # transformers' greedy continuation
    llama: str  # llama.cpp's own greedy continuation
    agree: bool
    first_diff: int | None = None  # first step where llama.cpp picks otherwise (not a tie)
    ties: list[int] = field(default_factory=list)  # steps where transformers' top two were within TIE


@dataclass
class Verification:
    outtype: str
    ok: bool
    prompts: list[PromptCheck] = field(default_factory=list)
    top1: float | None = None  # q8_0: top-1 agreement on neutral text, every position
    top1_tokens: int = 0
    top1_decided: float | None = None  # q8_0: the same where transformers' top-1 leads by >= Q8_DECIDED
    top1_decided_tokens: int = 0
    top1_flip_margin: float | None = None  # the largest lead of transformers' top-1 that llama.cpp overturned
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Reference:
    """transformers' side of the check, computed before llama.cpp opens the file (so the two models are
    never in memory together): each prompt's ids and greedy path, and (q8_0) the neutral text's top two."""

    tokenizer: object
    prompts: list[str]
    ids: list[list[int]]
    greedy: list[tuple[list[int], list[int], list[float]]]  # per prompt: tokens, runner-ups, leads (hf_greedy)
    neutral: list[tuple[list[int], np.ndarray, np.ndarray]] = field(default_factory=list)  # ids, top-1, lead


def reference(rt, prompts: list[str], n: int, *, neutral_tokens: int = 0, per_text: int = 128) -> Reference:
    """transformers' greedy path (n steps) for each prompt and, given ``neutral_tokens``, the top-1 and its
    lead at every position of that many tokens of held-out neutral paragraphs (``per_text`` at most each)."""
    ids = [rt.tokenizer(p)["input_ids"] for p in prompts]
    ref = Reference(rt.tokenizer, list(prompts), ids, [hf_greedy(rt, e, n) for e in ids])
    with torch.no_grad():
        for text in neutral_paragraphs("eval") if neutral_tokens else ():
            t = rt.tokenizer(text)["input_ids"][:per_text]
            v, k = rt.logits(torch.tensor([t], device=rt.device))[0].float().topk(2)
            ref.neutral.append((t, k[:, 0].cpu().numpy(), (v[:, 0] - v[:, 1]).cpu().numpy()))
            if sum(len(x[0]) for x in ref.neutral) >= neutral_tokens:
                break
    return ref


def verify(gguf: str | os.PathLike, checkpoint, *, outtype: str = "f16", prompts=None, max_new_tokens: int = 12,
           runtime=None, llm=None, raise_on_fail: bool = True) -> Verification:
    """Check ``gguf`` in llama.cpp against ``checkpoint`` in transformers (the module docstring says how).

    transformers runs first (:func:`reference`) and its model is dropped before llama.cpp loads the file,
    unless the caller passed its own ``runtime``. A failure is a :class:`GGUFError` naming the file and
    the first diverging prompt (or, with ``raise_on_fail=False``, a Verification with ``ok`` False).
    """
    t0 = time.perf_counter()
    q8 = outtype == "q8_0"
    n = 1 if q8 else max_new_tokens
    ref = reference(runtime or load(checkpoint), list(prompts or DEFAULT_PROMPTS), n,
                    neutral_tokens=Q8_TOKENS if q8 else 0)
    gc.collect()  # our own runtime is unreferenced now: its weights go before llama.cpp's arrive
    n_ctx = max(max(len(e) for e in ref.ids) + max_new_tokens, 128 if q8 else 0) + 8
    own = llm is None
    llm = llm or open_llama(gguf, n_ctx=n_ctx, all_logits=q8)
    try:
        result = Verification(outtype=outtype, ok=True)
        for i in range(len(ref.prompts)):
            problem = _check_prompt(ref, i, llm, result)
            if problem:
                return _fail(result, raise_on_fail, f"{gguf}: {problem}")
        if q8:
            (result.top1, result.top1_tokens, result.top1_decided, result.top1_decided_tokens,
             result.top1_flip_margin) = top1_agreement(ref, llm)
            if result.top1_decided < Q8_AGREEMENT or result.top1 < Q8_FLOOR:
                return _fail(result, raise_on_fail,
                             f"{gguf}: top-1 agreement with transformers on neutral text {result.top1_decided:.3f} "
                             f"where transformers leads by >= {Q8_DECIDED} logits (need {Q8_AGREEMENT}), "
                             f"{result.top1:.3f} overall (need {Q8_FLOOR}), over {result.top1_tokens} tokens")
        result.seconds = time.perf_counter() - t0
        return result
    finally:
        if own:
            llm.close()


def _check_prompt(ref: Reference, i: int, llm, result: Verification) -> str | None:
    """Compare prompt ``i`` of the reference; record it in ``result``; return what went wrong, or None."""
    tok, prompt, ids = ref.tokenizer, ref.prompts[i], ref.ids[i]
    ours, runner_up, margins = ref.greedy[i]
    theirs = list(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))
    if theirs != list(ids):
        return f"tokenizers disagree on {prompt!r}: transformers {ids[:12]}, llama.cpp {theirs[:12]}"
    got, _ = llama_follow(llm, ids, len(ours), forced=ours)  # llama.cpp's pick at each step of transformers' path
    check = PromptCheck(prompt, tok.decode(ours), tok.decode(ours), True)
    result.prompts.append(check)
    for j, (a, b) in enumerate(zip(ours, got)):
        if a == b:
            continue
        if b == runner_up[j] and margins[j] < TIE:
            check.ties.append(j)
            continue
        check.agree, check.first_diff, check.llama = False, j, tok.decode(ours[:j] + [b])
        return (f"llama.cpp and transformers diverge on {prompt!r} at generated token {j}: "
                f"{tok.decode(ours[:j + 1])!r} vs {check.llama!r} "
                f"(transformers' top-1 leads there by {margins[j]:.3f} logits)")
    if check.ties:  # past a tie llama.cpp's own greedy text may go its own way
        check.llama = tok.decode(llama_greedy(llm, ids, len(ours)))
    return None


@torch.no_grad()
def hf_greedy(rt, ids: list[int], n: int) -> tuple[list[int], list[int], list[float]]:
    """n greedy steps in transformers: (tokens, runner-ups, lead of the top-1 over the runner-up in logits)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=rt.model.config)
    x = torch.tensor([ids], device=rt.device)
    out, second, margins = [], [], []
    for _ in range(n):
        top = rt.logits(x, keep=1, use_cache=True, **{rt.cache_kw(): cache})[0, -1].float().topk(2)
        out.append(int(top.indices[0]))
        second.append(int(top.indices[1]))
        margins.append(float(top.values[0] - top.values[1]))
        x = top.indices[:1].view(1, 1)
    return out, second, margins


def top1_agreement(ref: Reference, llm) -> tuple[float, int, float, int, float]:
    """Top-1 next-token agreement of llama.cpp with the reference's neutral-text positions.

    Returns (agreement, positions, agreement where transformers' top-1 leads by ≥ Q8_DECIDED
    logits, those positions, the largest lead llama.cpp overturned).
    """
    same, margins = [], []
    for ids, top1, lead in ref.neutral:
        k = min(len(ids), llm.n_ctx())
        same.append(top1[:k] == np.argmax(llama_logits(llm, ids[:k]), axis=-1))
        margins.append(lead[:k])
    same, margins = np.concatenate(same), np.concatenate(margins)
    decided = margins >= Q8_DECIDED
    flips = margins[~same]
    return (float(same.mean()), int(same.size), float(same[decided].mean()) if decided.any() else 1.0,
            int(decided.sum()), float(flips.max()) if flips.size else 0.0)


def _fail(result: Verification, raise_on_fail: bool, msg: str) -> Verification:
    result.ok = False
    if raise_on_fail:
        raise GGUFError(msg)
    return result
