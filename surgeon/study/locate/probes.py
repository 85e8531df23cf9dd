"""What both methods read from a task: its probes, their token ids, and where target and original part."""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.errors import SurgeonError
from surgeon.study.task import Task

SITES = ("residual", "attn", "mlp")  # patching's columns: the stream after a layer, the two blocks' outputs
TOP = ("embed", "lm_head", "final_norm", "pos_embed")


class LocateError(SurgeonError):
    """The task has nothing to locate with, or the model cannot be traced."""


@dataclass
class Probe:
    prompt: str
    target: str
    original: str | None
    subject: str | None = None


def probes(task: Task, n: int) -> list[Probe]:
    """Up to ``n`` efficacy probes with a target (their subject from a training example with the same prompt),
    else the training prompts with their completions."""
    subjects = {e.prompt: e.subject for e in task.train if e.prompt and getattr(e, "subject", None)}
    out = [Probe(p.prompt, p.target, p.original, subjects.get(p.prompt)) for p in task.efficacy if p.target]
    if not out:
        out = [Probe(e.prompt, e.completion, None, getattr(e, "subject", None)) for e in task.train if e.prompt]
    if not out:
        raise LocateError(f"task {task.name}: needs efficacy probes with a target (or prompt -> completion examples)")
    return out[:n]


def ids(rt, text: str, special: bool = True) -> list[int]:
    return rt.tokenizer(text, add_special_tokens=special)["input_ids"]


def decision(rt, probe: Probe) -> tuple[list[int], int, int] | None:
    """(answer tokens both share, target token, original token) at the first place they differ."""
    t = ids(rt, probe.target, special=False)
    o = ids(rt, probe.original, special=False) if probe.original else []
    k = 0
    while k < min(len(t), len(o)) and t[k] == o[k]:
        k += 1
    if not o:
        return t[:0], t[0], -1
    if k >= len(t) or k >= len(o):
        return None
    return t[:k], t[k], o[k]


def subject_positions(rt, probe: Probe) -> list[int]:
    """Token positions of the probe's subject in its prompt (the tokens its characters fall in); [] if none."""
    if not (probe.subject and probe.subject in probe.prompt):
        return []
    start = probe.prompt.index(probe.subject)
    end = start + len(probe.subject)
    enc = rt.tokenizer(probe.prompt, return_offsets_mapping=True)
    return [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start and a < end and b > a]
