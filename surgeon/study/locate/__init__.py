"""Where does a behaviour live? A layers × roles map from two methods, and a suggested layer range.

* **Gradient attribution** (``gradient``) — one backward pass of the task loss
  (the NLL of the efficacy targets given their prompts, or of the training
  completions) and, per tensor, ``sum |grad ⊙ W|``: the first-order estimate
  of how much the loss would move if that tensor were switched off (Molchanov
  et al. 2019; "attribution patching", Nanda 2023). Grouped by layer × role
  with the role table; ``embed``/``lm_head``/``final_norm`` are reported
  apart. Every parameter is counted exactly once (a tied head is the embedding).
* **Activation patching** (``patching``) — causal tracing (Meng et al. 2022,
  "Locating and Editing Factual Associations in GPT", §2.1): a *clean* and a
  *corrupted* run of each probe, then the corrupted run again with one
  activation of one layer restored from the clean run — the residual stream
  after the layer, the attention block's output or the MLP block's output.
  The score is the share of the clean-vs-corrupted difference in a metric
  that the restoration brings back (0 = nothing, 1 = all), at the first token
  where target and original answers differ: ``log P(target) − log P(original)``
  for the contrast, ``log P(original)`` — what the clean model knows — for noise.
  Corruption: for a spelling task the *contrast* of conventions — clean is
  the prompt after two training sentences in the target convention (and the
  prompt itself converted), corrupted is the same text in the source
  convention; the model's in-context style is what gets traced. Otherwise
  Gaussian noise (3 × the embeddings' standard deviation, Meng et al.) on the
  subject's tokens, or on every prompt token but the last.
  Position: with noise on a subject, activations are restored at the subject's
  last token, as causal tracing does (restoring only the last token trivially
  recovers in the late layers, where the answer is being written out, whatever
  the task); otherwise at the last token. The result names the tokens patched.

**Suggested range.** Each method gives a per-layer profile: the share of the
gradient mass in each layer, and the positive part of ``max(attn, mlp)``
recovery per layer normalised to sum 1 (the residual row is left out: it only
falls or climbs with depth). Each method's own range is reported; with both,
the two profiles are averaged. The suggestion is the smallest contiguous range
of layers holding at least ``mass`` (default 0.5) of the profile. It is a
starting point for a ``compare`` arm, not a proof: attribution measures
sensitivity, patching measures where information flows for *this* model before
any change.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from surgeon.roles.layers import checkpoint_kinds, tags
from surgeon.runtime import Runtime, load
from surgeon.study.locate.gradient import gradient
from surgeon.study.locate.patching import POSITIONS, patching
from surgeon.study.locate.probes import SITES, TOP, LocateError
from surgeon.study.locate.result import LocateResult, layer_share
from surgeon.study.task import Task

__all__ = ["POSITIONS", "SITES", "TOP", "LocateError", "LocateResult", "contiguous_range", "locate",
           "suggest_layers", "suggested_layers"]


def _check(method: str, mass: float, examples: int, samples: int, position: str, corrupt: str) -> None:
    if method not in ("grad", "patch", "both"):
        raise LocateError(f"method {method!r}: choose grad, patch or both")
    if not 0 < mass <= 1:
        raise LocateError(f"mass {mass}: must be in (0, 1]")
    if examples < 1 or samples < 1:
        raise LocateError(f"examples {examples}, samples {samples}: each must be at least 1")
    if position not in POSITIONS or (position == "subject" and corrupt == "contrast"):
        raise LocateError(f"position {position!r}: choose auto, last, or subject with noise corruption")


def _patch_into(res: LocateResult, rt, task, examples, **kw) -> list[float] | None:
    """Run patching into ``res``; its per-layer profile (None when nothing recovered)."""
    t = patching(rt, task, examples, **kw)
    res.patch, res.patch_mode, res.patch_position, res.patch_positions = t.matrix, t.corrupt, t.position, t.positions
    res.patch_probes, res.patch_clean_p, res.patch_corrupt_p, res.patch_restored_p = \
        t.probes, t.clean_p, t.corrupt_p, t.restored_p
    prof = [max(0.0, max(row[1], row[2])) for row in res.patch]
    s = sum(prof)
    return [v / s for v in prof] if s > 0 else None


def locate(ck_or_path, task: Task | str | Path, *, method: str = "both", examples: int = 8, mass: float = 0.5,
           corrupt: str = "auto", noise: float = 3.0, seed: int = 0, margin: float = 0.1,
           position: str = "auto", samples: int = 1, progress: bool = False) -> LocateResult:
    """Score every layer × role for ``task`` and suggest a layer range; see the module doc.

    ``ck_or_path``: a Checkpoint, a directory, or a loaded :class:`~surgeon.runtime.Runtime`.
    ``examples``: probes used by each method (few are enough: one backward pass,
    3 × layers patched forward passes per probe). ``corrupt``: ``auto``,
    ``contrast`` (spelling tasks) or ``noise``. ``position``: where activations
    are restored — ``subject`` (noise only: the subject's last token, or the last
    corrupted token of a probe without a subject; ROME's "early site"), ``last``
    token, or ``auto``: ``subject`` when noise corrupts probes that name a subject,
    else ``last``. ``samples``: noise draws per probe (Meng et al. average ten;
    each costs one more batch of patched runs).
    """
    _check(method, mass, examples, samples, position, corrupt)
    if not isinstance(task, Task):
        task = Task.load(task)
    t0 = time.perf_counter()
    rt = ck_or_path if isinstance(ck_or_path, Runtime) else load(ck_or_path)
    path = getattr(rt.ck, "path", None)
    res = LocateResult(task=task.name, model=Path(path).name if path else "model", num_layers=rt.num_layers, mass=mass,
                       layer_kinds=tags(checkpoint_kinds(rt.ck))[: rt.num_layers])
    profiles = {}
    if method in ("grad", "both"):
        a = gradient(rt, task, examples)
        res.roles, res.grad, res.grad_top, res.grad_total = a.roles, a.grid, a.top, a.total
        profiles["grad"] = layer_share(res.grad, sum(sum(r) for r in res.grad))
    if method in ("patch", "both"):
        prof = _patch_into(res, rt, task, examples, corrupt=corrupt, noise=noise, seed=seed, margin=margin,
                           position=position, samples=samples, progress=progress)
        if prof is not None:
            profiles["patch"] = prof
    for k, prof in profiles.items():
        a, b = contiguous_range(prof, mass)
        res.suggested_by[k] = f"{a}-{b}"
    if profiles:
        res.profile = [sum(p[L] for p in profiles.values()) / len(profiles) for L in range(rt.num_layers)]
        res.suggested = contiguous_range(res.profile, mass)
    res.seconds = time.perf_counter() - t0
    return res


def contiguous_range(profile: list[float], mass: float) -> tuple[int, int]:
    """The shortest run of consecutive layers whose profile sums to >= ``mass`` × total (ties: the heavier)."""
    total = sum(profile)
    if total <= 0:
        return 0, len(profile) - 1
    need = mass * total - 1e-12
    best = None
    for a in range(len(profile)):
        s = 0.0
        for b in range(a, len(profile)):
            s += profile[b]
            if s >= need:
                key = (b - a, -s)
                if best is None or key < best[0]:
                    best = (key, (a, b))
                break
    return best[1] if best else (0, len(profile) - 1)


def suggest_layers(model, task, method: str | None = None, **kw) -> list[int]:
    """The suggested layers as a list, for ``compare``'s ``layers=auto[:METHOD]``.

    ``method``: ``grad``, ``patch`` or ``both`` (default) runs :func:`locate`;
    a path to a ``locate.json`` reuses a result already computed
    (``layers=auto:runs/locate.json``).
    """
    if method and (method.endswith(".json") or Path(method).is_file()):
        a, b = (int(x) for x in suggested_layers(method).split("-"))
    else:
        r = locate(model, task, method=method or "both", **kw)
        if r.suggested is None:
            raise LocateError(f"task {getattr(task, 'name', task)}: locate found no layer profile to suggest from")
        a, b = r.suggested
    return list(range(a, b + 1))


def suggested_layers(path_or_doc) -> str:
    """``"a-b"`` from a locate.json written by :meth:`LocateResult.save_json` (for ``compare`` arms)."""
    doc = path_or_doc
    if not isinstance(doc, dict):
        p = Path(path_or_doc)
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LocateError(f"{p}: cannot read a locate result ({e})") from None
    layers = doc.get("suggested_layers")
    if not layers:
        raise LocateError(f"{path_or_doc}: no suggested_layers in this locate result")
    return layers
