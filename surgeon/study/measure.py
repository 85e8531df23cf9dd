"""Did the change work, did it generalise, what else moved: the metrics of a task.

Each metric compares a *changed* model with the *original* one on the probes
of a :class:`~surgeon.study.task.Task`. The original model's side is computed once
(:func:`reference`) and reused for every changed model (:func:`measure`), so a
comparison of five arms runs the original once.

* **efficacy** — share of efficacy prompts where P(target) > P(original
  answer), and the mean P(target). This is the *efficacy score* and
  *efficacy magnitude* of CounterFact (Meng et al. 2022, "Locating and
  Editing Factual Associations in GPT", §3 and appendix). For a target of
  several tokens the *comparison* uses the mean log-probability per token
  (length-normalised, as ROME's evaluation code compares targets of different
  lengths), and the reported P(target) is the whole sequence's probability,
  the product of the per-token probabilities given the prompt and the
  target's earlier tokens. When a probe names no original answer, the original
  model's own top-1 next token at that prompt is used.
* **generalisation** — the same on prompts held apart from training and
  editing (CounterFact's *paraphrase score*).
* **specificity** — share of specificity prompts whose top-1 next token is
  the same as the original model's (the "retain" check of EasyEdit's
  locality metric); **neighbourhood** — for specificity probes that name a
  target and an original answer, the share where P(original) > P(target)
  still holds (CounterFact's *neighbourhood score*).
* **kl** — mean over all token positions of the neutral texts of
  KL(original ‖ changed) of the next-token distributions, in nats. heretic
  reports this KL to the original model as its measure of collateral damage.
  The texts are tokenised once by the *original* tokenizer and fed to both
  models, so an arm that adds tokens is measured on the same positions (its
  new tokens count as probability mass taken from the original vocabulary).
* **perplexity_ratio** — perplexity of the changed model on the neutral texts
  divided by the original's: exp(mean NLL changed − mean NLL original).
* **spelling** — for tasks with a ``spelling`` section: the rate of the
  target spelling in greedy generations from the task's prompts, counted by
  the rule set that defines the task (:mod:`surgeon.study.spelling`); the
  words of degenerate generations count as misses.
* **efficacy_gen, generalisation_gen, neighbourhood_gen** — the same probes
  scored on what the model *writes*: greedy continuations of up to 8 tokens,
  no teacher forcing (:func:`generated_success`, "The Mirage of Model
  Editing" protocol); spelling tasks score them by their rule set.
* **rule R** (``counts`` only, spelling tasks) — per rule of the rule set, the share of the words that
  rule speaks about written as it wants, over the non-degenerate generations (pre-reform ``ъ``: the
  hard-sign compliance).
* **degenerate** — share of all of the model's generations (probe answers,
  spelling and free texts) that :func:`surgeon.study.generate.degeneration`
  flags; **fluency** — ROME's n-gram entropy of free generations from the
  first words of the neutral texts (:func:`fluency`).

Every rate has its count and Wilson interval in ``Metrics.counts``.

Everything runs through the runtime bridge (:mod:`surgeon.runtime`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from surgeon.errors import SurgeonError
from surgeon.runtime import Runtime, load
from surgeon.study import fact_scores, generate, spelling
from surgeon.study.generate import Rate, fluency, free_text, generated_success, wilson  # noqa: F401 (re-exported)
from surgeon.study.task import Probe, Task

NEUTRAL_MAX_TOKENS = 128


class MeasureError(SurgeonError):
    """A metric cannot be computed for this task or model."""


@dataclass
class Metrics:
    """One model's numbers on one task (None where the task has no probes of that kind)."""

    efficacy: float | None = None
    efficacy_p: float | None = None
    generalisation: float | None = None
    generalisation_p: float | None = None
    specificity: float | None = None
    neighbourhood: float | None = None
    kl: float | None = None
    perplexity_ratio: float | None = None
    spelling: float | None = None
    efficacy_gen: float | None = None
    generalisation_gen: float | None = None
    neighbourhood_gen: float | None = None
    degenerate: float | None = None
    fluency: float | None = None
    counts: dict = field(default_factory=dict)  # metric -> Rate.to_dict(): k, n, rate, Wilson lo/hi
    details: dict = field(default_factory=dict)

    def count(self, key: str, rate: Rate) -> float | None:
        """Record ``rate`` under ``key`` (with its count and interval) and return the share."""
        self.counts[key] = rate.to_dict()
        return rate.rate

    def to_dict(self, details: bool = True) -> dict:
        d = asdict(self)
        if not details:
            d.pop("details")
        return d


@dataclass
class Reference:
    """The original model's side of every metric, computed once per task."""

    efficacy_original: list[str]  # the answer P(target) is compared with, per efficacy probe
    generalisation_original: list[str]
    specificity_top1: list[int]  # original top-1 next-token id per specificity prompt
    neutral_ids: list[torch.Tensor]  # token ids per neutral text (original tokenizer)
    neutral_logprobs: list[torch.Tensor] | _Spilled  # (positions, vocab) float32 per text
    neutral_nll: float | None  # mean NLL of the original on the neutral texts
    spelling_texts: list[str] = field(default_factory=list)
    spelling_rate: float | None = None

    @property
    def vocab_size(self) -> int | None:
        return self.neutral_logprobs[0].shape[-1] if len(self.neutral_logprobs) else None


class _Spilled:
    """Per-text log-prob tensors kept in a temporary safetensors file instead of memory.

    Gemma-3's 262k vocabulary makes 16 texts × 128 positions 2 GB of float32;
    exact KL needs them all, so past :data:`SPILL_BYTES` they go to disk and
    are read back one text at a time.
    """

    def __init__(self):
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="surgeon-reference-")
        self._n = 0

    def append(self, t: torch.Tensor) -> None:
        from safetensors.torch import save_file

        save_file({"logprobs": t.contiguous()}, f"{self._dir.name}/{self._n}.safetensors")
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> torch.Tensor:
        from safetensors import safe_open

        if not -self._n <= i < self._n:
            raise IndexError(i)
        with safe_open(f"{self._dir.name}/{i % self._n}.safetensors", framework="pt") as f:
            return f.get_tensor("logprobs")

    def __iter__(self):
        return (self[i] for i in range(self._n))


SPILL_BYTES = 512 << 20


# ----------------------------------------------------------------- entry points


def reference(original, task: Task, *, max_tokens: int = NEUTRAL_MAX_TOKENS, progress: bool = False) -> Reference:
    """Run the original model over the task once: answers, top-1s, neutral distributions."""
    rt = _runtime(original)
    eff, gen = _originals(rt, task.efficacy), _originals(rt, task.generalisation)
    spec = ([int(i) for i in rt.next_token_logprobs([p.prompt for p in task.specificity]).argmax(-1)]
            if task.specificity else [])
    ids, logps, nll_sum, n = [], [], 0.0, 0
    for text in task.neutral:
        t = rt.tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"][0]
        if len(t) < 2:
            continue
        lp = _logprobs(rt, t)
        ids.append(t)
        if isinstance(logps, list) and (len(logps) + 1) * lp.numel() * lp.element_size() > SPILL_BYTES:
            spilled = _Spilled()
            for x in logps:
                spilled.append(x)
            logps = spilled
        logps.append(lp)
        nll_sum += -lp[:-1].gather(1, t[1:].view(-1, 1)).sum().item()
        n += len(t) - 1
    texts, rate = ([], None) if task.spelling is None else _spelling(rt, task)[:2]
    return Reference(eff, gen, spec, ids, logps, nll_sum / n if n else None, texts,
                     None if rate is None else rate.rate)


def measure(changed, task: Task, ref: Reference, *, generated: bool = True) -> Metrics:
    """Every metric of ``task`` for ``changed`` (a Runtime, Checkpoint or directory) against ``ref``.

    ``generated=False`` skips the generated metrics (answers, free text): the teacher-forced ones only.
    """
    rt = _runtime(changed)
    m = Metrics()
    if task.efficacy:
        m.efficacy, m.efficacy_p, m.details["efficacy"] = _success(rt, task.efficacy, ref.efficacy_original)
        m.efficacy = m.count("efficacy", _tally(m.details["efficacy"], "success"))
    if task.generalisation:
        m.generalisation, m.generalisation_p, m.details["generalisation"] = _success(
            rt, task.generalisation, ref.generalisation_original)
        m.generalisation = m.count("generalisation", _tally(m.details["generalisation"], "success"))
    if task.specificity:
        _specificity(rt, task, ref, m)
    if ref.neutral_ids:
        m.kl, m.perplexity_ratio = _neutral(rt, ref)
    degenerate = Rate(0, 0)
    if task.spelling is not None:
        texts, rate, bad = _spelling(rt, task)
        m.spelling = m.count("spelling", rate)
        m.details["spelling"] = {"original": ref.spelling_rate, "generations": texts}
        degenerate += bad
    if generated:
        degenerate += _generated(rt, task, ref, m)
        if task.spelling is not None:
            _by_rule(task, m)
    if degenerate.n:
        m.degenerate = m.count("degenerate", degenerate)
    return m


def _tally(rows: list[dict], key: str) -> Rate:
    return Rate(sum(bool(r[key]) for r in rows), len(rows))


def _specificity(rt, task: Task, ref: Reference, m: Metrics) -> None:
    """Top-1 kept on every specificity prompt; P(original) > P(target) on those that name both."""
    if len(ref.specificity_top1) != len(task.specificity):
        raise MeasureError("reference was computed for a different task (specificity prompts differ)")
    lp = rt.next_token_logprobs([p.prompt for p in task.specificity])
    top = [int(i) for i in lp.argmax(-1)]
    kept = [a == b for a, b in zip(top, ref.specificity_top1)]
    m.specificity = m.count("specificity", Rate(sum(kept), len(kept)))
    m.details["specificity"] = [
        {"prompt": p.prompt, "original_top1": rt.tokenizer.decode([b]), "top1": rt.tokenizer.decode([a]), "kept": k}
        for p, a, b, k in zip(task.specificity, top, ref.specificity_top1, kept)]
    neigh = [p for p in task.specificity if p.target and p.original]
    if neigh:
        rows = []
        for p, (lt, nt), (lo, no) in zip(neigh, *_pair_logprobs(rt, neigh, [p.original for p in neigh])):
            rows.append({"prompt": p.prompt, "p_target": math.exp(lt), "p_original": math.exp(lo),
                         "kept": lo / no > lt / nt})
        m.neighbourhood = m.count("neighbourhood", _tally(rows, "kept"))
        m.details["neighbourhood"] = rows


def _generated(rt, task: Task, ref: Reference, m: Metrics) -> Rate:
    """Generated success on efficacy, generalisation and neighbour probes, fluency of free text.

    Returns the degenerate generations among all of them.
    """
    rules = task.spelling["rules"] if task.spelling else None
    bad = Rate(0, 0)
    for key, probes, originals in (("efficacy", task.efficacy, ref.efficacy_original),
                                   ("generalisation", task.generalisation, ref.generalisation_original)):
        if probes:
            g = generated_success(rt, probes, originals, rules=rules)
            setattr(m, f"{key}_gen", m.count(f"{key}_gen", g.rate))
            m.details[f"{key}_gen"] = g.rows
            bad += g.degenerate
    neigh = [p for p in task.specificity if p.target and p.original]
    if neigh:
        g = generated_success(rt, neigh, keep=True)
        m.neighbourhood_gen = m.count("neighbourhood_gen", g.rate)
        m.details["neighbourhood_gen"] = g.rows
        bad += g.degenerate
    prompts = generate.neutral_prompts(task.neutral)
    if prompts:
        free = free_text(rt, prompts)
        m.fluency = free.fluency
        m.details["free_text"] = free.texts
        bad += free.degenerate
    return bad


def _by_rule(task: Task, m: Metrics) -> None:
    """``counts["rule R"]`` for each rule R of the task's rule set: the words R speaks about that the model
    wrote as R wants, over its non-degenerate generations (spelling prompts and probe answers). A rule set
    may count more under a rule than the whole-word rate does: pre-reform ``ъ`` also counts a sign put
    inside a word where none belongs (``деревъне``)."""
    texts = m.details["spelling"]["generations"] + [
        r["generated"] for key in ("efficacy_gen", "generalisation_gen") for r in m.details.get(key, [])]
    score = spelling.get(task.spelling["rules"]).score([t for t in texts if generate.degeneration(t) is None])
    for rule, (hits, n) in sorted(score.by_rule.items()):
        m.count(f"rule {rule}", Rate(hits, n))


def compare_models(original, changed, task: Task) -> Metrics:
    """Convenience: :func:`reference` then :func:`measure` (use those two when measuring many models)."""
    return measure(changed, task, reference(original, task))


# ----------------------------------------------------------------- pieces


def _runtime(x):
    return x if isinstance(x, Runtime) else load(x)


@torch.no_grad()
def _logprobs(rt, ids: torch.Tensor) -> torch.Tensor:
    logits = rt.model(input_ids=ids.view(1, -1).to(rt.device)).logits[0]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _originals(rt, probes: list[Probe]) -> list[str]:
    """Each probe's original answer: its own, else the model's top-1 next token (one batched pass)."""
    missing = [p.prompt for p in probes if not p.original]
    top = iter([rt.tokenizer.decode([int(i)]) for i in rt.next_token_logprobs(missing).argmax(-1)] if missing else [])
    return [p.original or next(top) for p in probes]


def _pair_logprobs(rt, probes: list[Probe], originals: list[str]):
    """(Σ log P, number of tokens) of each probe's target and of its original answer, in one batched pass."""
    pairs = [(p.prompt, p.target) for p in probes] + [(p.prompt, o) for p, o in zip(probes, originals)]
    got = fact_scores.answer_logprobs(rt, pairs)
    for (prompt, answer), (_, n) in zip(pairs, got):
        if n == 0:
            raise MeasureError(f"answer {answer!r} of prompt {prompt!r} encodes to no tokens")
    return got[:len(probes)], got[len(probes):]


def _success(rt, probes: list[Probe], originals: list[str]):
    rows = []
    for p, orig, (lt, nt), (lo, no) in zip(probes, originals, *_pair_logprobs(rt, probes, originals)):
        rows.append({"prompt": p.prompt, "target": p.target, "original": orig,
                     "p_target": math.exp(lt), "p_original": math.exp(lo), "success": lt / nt > lo / no})
    return (sum(r["success"] for r in rows) / len(rows), sum(r["p_target"] for r in rows) / len(rows), rows)


@torch.no_grad()
def _neutral(rt, ref: Reference) -> tuple[float, float]:
    kl_sum, nll_sum, n = 0.0, 0.0, 0
    V = ref.vocab_size
    for ids, lp_orig in zip(ref.neutral_ids, ref.neutral_logprobs):
        lp = _logprobs(rt, ids)
        if lp.shape[-1] < V:
            raise MeasureError(f"changed model has {lp.shape[-1]} vocabulary entries, fewer than the original's {V}")
        lp = lp[:, :V]  # tokens the change added hold mass the original vocabulary lost
        kl_sum += (lp_orig.exp() * (lp_orig - lp)).sum().item()
        nll_sum += -lp[:-1].gather(1, ids[1:].view(-1, 1)).sum().item()
        n += len(ids)
    n_pred = sum(len(i) - 1 for i in ref.neutral_ids)
    kl = max(kl_sum / n, 0.0)
    ratio = math.exp(nll_sum / n_pred - ref.neutral_nll)
    return kl, ratio


def _spelling(rt, task: Task) -> tuple[list[str], Rate, Rate]:
    """Greedy generations from the task's spelling prompts: (texts, target spellings, degenerate texts)."""
    prompts = task.spelling.get("prompts") or []
    if not prompts:
        raise MeasureError(f"task {task.name}: spelling needs a list of prompts to generate from")
    n = int(task.spelling.get("max_new_tokens", 40))
    texts = rt.generate(prompts, max_new_tokens=n, batch_size=generate.GEN_BATCH)
    rate, bad = generate.spelling_counts(task.spelling["rules"], texts)
    return texts, rate, bad


def spelling_rate(rules: str, texts: list[str]) -> float | None:
    """Rate of the target spelling in ``texts`` by the named rule set (None when no word is scored);
    degenerate texts count their words as misses (:func:`surgeon.study.generate.spelling_counts`)."""
    return generate.spelling_counts(rules, texts)[0].rate
