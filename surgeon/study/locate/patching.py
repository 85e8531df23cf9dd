"""Activation patching (causal tracing, Meng et al. 2022, "Locating and Editing Factual Associations in GPT", §2.1).

A *clean* and a *corrupted* run of each probe, then the corrupted run again with
one activation of one layer restored from the clean run at one token position.
The score is the share of the clean-vs-corrupted difference in a metric that
the restoration brings back (0 = nothing, 1 = all).

Where: for a fact task whose probes name a subject, at the subject's last token
(the paper's "early site": restoring the last token only ever recovers in the
late layers, where the answer is already being written out); otherwise at the
last token. Every forward pass goes through :class:`~surgeon.runtime.Runtime`.
"""

from __future__ import annotations

import copy
import math
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import torch

from surgeon.study import spelling
from surgeon.study.locate.probes import LocateError, Probe, decision, ids, probes, subject_positions
from surgeon.study.task import Task

POSITIONS = ("auto", "last", "subject")


@dataclass
class Tracing:
    """Patching's result: ``matrix`` is layers × (residual, attn, mlp) restored shares, averaged over probes."""

    matrix: list[list[float]]
    corrupt: str  # "noise" or "contrast"
    position: str  # "subject" or "last"
    probes: int
    clean_p: float  # mean P(traced token) in the clean runs (target; original for noise)
    corrupt_p: float
    restored_p: float  # ... with the last layer's residual restored at the patched position
    positions: list[dict] = field(default_factory=list)  # per prompt traced: where it was patched


@dataclass
class _Setup:
    corrupt: str
    position: str
    noise: float
    margin: float
    gen: torch.Generator
    rules: spelling.RuleSet | None = None
    context: tuple[str, str] = ("", "")  # (target-convention text, the same in the source convention)


@dataclass
class _Traced:
    scores: list[tuple[int, int, float]]  # (layer, site, restored share)
    clean_p: float
    corrupt_p: float
    restored_p: float
    where: dict


def _contrast_context(task: Task, rules, n: int = 2) -> tuple[str, str]:
    """``n`` distinct training texts in the target convention, and the same in the source convention."""
    texts: list[str] = []
    for e in task.train:
        t = rules.convert(rules.source(e.text.strip()))  # a prompt -> completion pair may mix the two
        if t and t not in texts:
            texts.append(t)
        if len(texts) == n:
            break
    target = " ".join(texts)
    return target, rules.source(target)


def _setup(task: Task, ps: list[Probe], corrupt: str, position: str, noise: float, seed: int,
           margin: float) -> _Setup:
    """Resolve ``auto`` corruption (contrast for spelling tasks, else noise) and ``auto`` position (the
    subject's last token when noise corrupts probes that name a subject in their prompt, else the last)."""
    if corrupt == "auto":
        corrupt = "contrast" if task.spelling else "noise"
    if corrupt not in ("contrast", "noise"):
        raise LocateError(f"corrupt {corrupt!r}: choose auto, contrast or noise")
    if corrupt == "contrast" and not task.spelling:
        raise LocateError(f"task {task.name}: contrast corruption needs a spelling section (its rules)")
    if position not in POSITIONS or (position == "subject" and corrupt == "contrast"):
        raise LocateError(f"position {position!r}: choose auto, last, or subject with noise corruption")
    if position == "auto":
        named = corrupt == "noise" and any(p.subject and p.subject in p.prompt for p in ps)
        position = "subject" if named else "last"
    s = _Setup(corrupt, position, noise, margin, torch.Generator().manual_seed(seed))
    if corrupt == "contrast":
        s.rules = spelling.get(task.spelling["rules"])
        s.context = _contrast_context(task, s.rules)
    return s


def _noise_positions(rt, pr: Probe, length: int) -> list[int]:
    """Token positions of the subject, else every position but the last (and the BOS)."""
    return subject_positions(rt, pr) or list(range(int(rt.bos_id is not None), length - 1))


def _noise_patch(rt, token_ids, positions, scale, gen):
    """A function adding fixed Gaussian noise (``scale`` × std of this prompt's embeddings) at ``positions``."""
    with rt.capture(["embed"]) as acts:
        rt.last_logprobs(token_ids)
    emb = acts["embed"]
    std = float(emb[0].float().std())
    eps = torch.randn((len(positions), emb.shape[-1]), generator=gen) * scale * std
    idx = torch.tensor(positions, dtype=torch.long)

    def fn(x):
        x = x.clone()
        x[:, idx] = x[:, idx] + eps.to(x.dtype).to(x.device)
        return x

    fn.touches_last = len(token_ids) - 1 in positions
    return fn


def _runs(rt, pr: Probe, s: _Setup, shared: list[int]):
    """(clean ids, corrupted ids, corrupting patch or None, restore position), None for a one-token prompt.

    Contrast: clean is the prompt after target-convention context, corrupted the same in the source convention
    (the model's in-context style is what gets traced). Noise: Gaussian noise on the subject's tokens (or on
    every prompt token but the last), restored at the last noised token (``subject``) or the last token."""
    if s.corrupt == "contrast":
        ctx_t, ctx_s = s.context
        clean = ids(rt, (ctx_t + " " + s.rules.convert(pr.prompt)).strip()) + shared
        bad = ids(rt, (ctx_s + " " + s.rules.source(pr.prompt)).strip()) + shared
        return clean, bad, None, -1
    clean = ids(rt, pr.prompt) + shared
    pos = _noise_positions(rt, pr, len(clean))
    if not pos:  # a one-token prompt: nothing before the last token to corrupt
        return None
    patch = _noise_patch(rt, clean, pos, s.noise, s.gen)
    return clean, clean, patch, pos[-1] if s.position == "subject" else -1


def _where(rt, pr: Probe, s: _Setup, bad_ids: list[int], at: int) -> dict:
    """Which token was patched, for the report."""
    index = at % len(bad_ids)
    kind = "last" if s.position == "last" else ("subject" if subject_positions(rt, pr) else "last corrupted")
    return {"prompt": pr.prompt, "subject": pr.subject if kind == "subject" else None, "kind": kind,
            "index": index, "tokens": len(bad_ids), "token": rt.tokenizer.decode([bad_ids[index]])}


def _trace(rt, pr: Probe, s: _Setup, points) -> _Traced | str:
    """One probe traced: the restored share at every point, or why it was skipped."""
    d = decision(rt, pr)
    if d is None:
        return "undecided"
    shared, tid, oid = d

    def metric(lp):
        if s.corrupt == "noise":  # Meng et al.: the probability of what the clean model knows
            return float(lp[oid] if oid >= 0 else lp[tid])
        return float(lp[tid] - (lp[oid] if oid >= 0 else 0.0))

    runs = _runs(rt, pr, s, shared)
    if runs is None:
        return "short"
    clean_ids, bad_ids, bad_patch, at = runs
    with rt.capture([p for p, _, _ in points]) as acts:
        lp_clean = rt.last_logprobs(clean_ids)
    clean_acts = {k: v[:, at].clone() for k, v in acts.items()}
    lp_bad = _run(rt, bad_ids, bad_patch)
    m_clean, m_bad = metric(lp_clean), metric(lp_bad)
    if abs(m_clean - m_bad) < s.margin:
        return "flat"
    tok = oid if s.corrupt == "noise" and oid >= 0 else tid  # the token the metric follows
    lps = _run_restored(rt, bad_ids, bad_patch, [(p, clean_acts[p]) for p, _, _ in points], at)
    scores = [(layer, site, (metric(lp) - m_bad) / (m_clean - m_bad)) for (_, layer, site), lp in zip(points, lps)]
    return _Traced(scores, math.exp(float(lp_clean[tok])), math.exp(float(lp_bad[tok])),
                   math.exp(float(lps[rt.num_layers - 1][tok])), _where(rt, pr, s, bad_ids, at))


def patching(rt, task: Task, n: int, *, corrupt: str = "auto", noise: float = 3.0, seed: int = 0,
             margin: float = 0.1, position: str = "auto", samples: int = 1, progress: bool = False) -> Tracing:
    """Trace up to ``n`` probes (``samples`` noise draws each); see the module doc."""
    ps = probes(task, n)
    s = _setup(task, ps, corrupt, position, noise, seed, margin)
    if s.corrupt == "noise":
        ps = [p for p in ps for _ in range(max(1, samples))]
    L = rt.num_layers
    points = [(f"layers.{i}", i, 0) for i in range(L)] + [(f"layers.{i}.attn", i, 1) for i in range(L)] \
        + [(f"layers.{i}.mlp", i, 2) for i in range(L)]
    if progress:
        from tqdm import tqdm

        ps = tqdm(ps, desc="patching", unit="probe")
    traced, short = [], 0
    for pr in ps:
        t = _trace(rt, pr, s, points)
        short += t == "short"
        if isinstance(t, _Traced):
            traced.append(t)
    if not traced:
        why = f"; {short} probe(s) skipped: a one-token prompt has nothing to corrupt" if short else ""
        raise LocateError(f"task {task.name}: no probe shows a clean-vs-corrupted difference above {margin} nats "
                          f"({s.corrupt} corruption{why}); nothing to trace")
    sums = [[0.0] * 3 for _ in range(L)]
    for t in traced:
        for layer, site, v in t.scores:
            sums[layer][site] += v
    k = len(traced)
    where = list({t.where["prompt"]: t.where for t in traced}.values())
    return Tracing([[v / k for v in row] for row in sums], s.corrupt, s.position, k,
                   sum(t.clean_p for t in traced) / k, sum(t.corrupt_p for t in traced) / k,
                   sum(t.restored_p for t in traced) / k, where)


def _run(rt, token_ids, bad_patch) -> torch.Tensor:
    """The corrupted run's last-position log-probs."""
    if bad_patch is None:
        return rt.last_logprobs(token_ids)
    with rt.patch("embed", bad_patch):
        return rt.last_logprobs(token_ids)


def _restore(items):
    """A patch writing each batch row's own clean activation at its position."""
    def put(h):
        h = h.clone()
        for j, at, value in items:
            h[j, at] = value[0].to(h.dtype)
        return h

    return put


@torch.no_grad()
def _run_restored(rt, token_ids, bad_patch, restores, at: int = -1, chunk: int = 64) -> list[torch.Tensor]:
    """The corrupted run once per ``(point, clean activation)``, each with that one activation restored
    at position ``at``. Batched: row j of a batch restores only its own point."""
    out = []
    prefix = None
    if at in (-1, len(token_ids) - 1) and len(token_ids) > 1 and not getattr(bad_patch, "touches_last", False):
        prefix = _prefix_cache(rt, token_ids, bad_patch)  # every earlier position is the corrupted run's
    for c in range(0, len(restores), chunk):
        part = restores[c:c + chunk]
        kw = {}
        if prefix is None:
            x = torch.tensor([token_ids] * len(part), device=rt.device)
        else:
            x = torch.tensor([token_ids[-1:]] * len(part), device=rt.device)
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(part))
            kw = {rt.cache_kw(): cache, "use_cache": True}
        with ExitStack() as stack:
            if bad_patch is not None and prefix is None:
                stack.enter_context(rt.patch("embed", bad_patch))
            rows: dict[str, list] = {}
            for j, (point, value) in enumerate(part):
                rows.setdefault(point, []).append((j, -1 if prefix is not None else at, value))
            for point, items in rows.items():
                stack.enter_context(rt.patch(point, _restore(items)))
            logits = rt.logits(x, keep=1, **kw)[:, -1]
        out.extend(torch.log_softmax(logits.float(), dim=-1))
    return out


def _prefix_cache(rt, token_ids, bad_patch):
    """The KV cache of the corrupted run over every position but the last."""
    with rt.patch("embed", bad_patch) if bad_patch is not None else nullcontext():
        return rt.prefix_cache(token_ids[:-1])
