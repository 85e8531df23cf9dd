"""Where does a behaviour live? A layers × roles map from two methods, and a suggested layer range.

* **Gradient attribution** — one backward pass of the task loss (the NLL of
  the efficacy targets given their prompts, or of the training completions)
  and, per tensor, ``sum |grad ⊙ W|``: the first-order estimate of how much
  the loss would move if that tensor were switched off (the attribution of
  Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning",
  also used for "attribution patching", Nanda 2023). Grouped by layer × role
  with the role table; ``embed``/``lm_head``/``final_norm`` are reported
  apart. Every parameter is counted exactly once (a tied head is the embedding).
* **Activation patching** — causal tracing (Meng et al. 2022, "Locating and
  Editing Factual Associations in GPT", §2.1) at the last token: a *clean*
  and a *corrupted* run of each probe, then the corrupted run again with one
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

**Suggested range.** Each method gives a per-layer profile: the share of the
gradient mass in each layer, and the positive part of ``max(attn, mlp)``
recovery per layer normalised to sum 1 (the residual row only climbs towards
1 at the top and is left out). With both methods the two profiles are
averaged. The suggestion is the smallest contiguous range of layers holding
at least ``mass`` (default 0.5) of the profile. It is a starting point for a
``compare`` arm, not a proof: attribution measures sensitivity, patching
measures where information flows for *this* model before any change.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import SurgeonError
from .task import Task

SITES = ("residual", "attn", "mlp")
TOP = ("embed", "lm_head", "final_norm", "pos_embed")


class LocateError(SurgeonError):
    """The task has nothing to locate with, or the model cannot be traced."""


@dataclass
class LocateResult:
    """Scores and the suggestion; ``grad``: layers × ``roles``, ``patch``: layers × ``SITES``."""

    task: str
    model: str
    num_layers: int
    roles: list[str] = field(default_factory=list)
    grad: list[list[float]] | None = None
    grad_top: dict[str, float] = field(default_factory=dict)
    grad_total: float | None = None
    patch: list[list[float]] | None = None
    patch_mode: str | None = None
    patch_probes: int = 0
    patch_clean_p: float | None = None  # mean P(traced token) in the clean runs (target; original for noise)
    patch_corrupt_p: float | None = None
    patch_restored_p: float | None = None  # ... with the last layer's residual restored
    profile: list[float] = field(default_factory=list)
    suggested: tuple[int, int] | None = None
    suggested_by: dict[str, str] = field(default_factory=dict)
    mass: float = 0.5
    seconds: float = 0.0

    @property
    def suggested_layers(self) -> str | None:
        return None if self.suggested is None else f"{self.suggested[0]}-{self.suggested[1]}"

    def to_dict(self) -> dict:
        return {
            "task": self.task, "model": self.model, "num_layers": self.num_layers,
            "suggested_layers": self.suggested_layers, "suggested_by": self.suggested_by, "mass": self.mass,
            "profile": self.profile,
            "grad": None if self.grad is None else {
                "roles": self.roles, "matrix": self.grad, "top": self.grad_top, "total": self.grad_total,
                "layer_share": _layer_share(self.grad, self.grad_total)},
            "patch": None if self.patch is None else {
                "sites": list(SITES), "matrix": self.patch, "mode": self.patch_mode, "probes": self.patch_probes,
                "clean_p": self.patch_clean_p, "corrupt_p": self.patch_corrupt_p,
                "restored_last_residual_p": self.patch_restored_p},
            "seconds": self.seconds,
        }

    def save_json(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    # ------------------------------------------------------------------ text

    def text(self) -> str:
        """The heatmap(s) as text: one row per layer, shaded cells, and the suggestion."""
        shades = " .:-=+*#%@"
        lines = [f"locate {self.task} on {self.model} ({self.num_layers} layers)"]
        g = self.grad
        p = self.patch
        gmax = max((v for row in g for v in row), default=0.0) if g else 0.0
        head = "layer "
        if g:
            head += "gradient |grad⊙W| by role: " + " ".join(_short(r) for r in self.roles) + "  layer%  "
        if p:
            head += f"patching ({self.patch_mode}): " + "  ".join(f"{s:>8}" for s in SITES)
        lines.append(head)
        share = _layer_share(g, self.grad_total) if g else None
        for L in range(self.num_layers):
            mark = "▶" if self.suggested and self.suggested[0] <= L <= self.suggested[1] else " "
            row = f"{mark}{L:>4} "
            if g:
                cells = "".join(f"{shades[min(9, int(9.999 * v / gmax)) if gmax else 0]:>{len(_short(r)) + 1}}"
                                for v, r in zip(g[L], self.roles))
                row += " " * len("gradient |grad⊙W| by role:") + cells + f"  {100 * share[L]:5.1f}%  "
            if p:
                row += " " * len(f"patching ({self.patch_mode}):") + "  ".join(f"{v:8.3f}" for v in p[L])
            lines.append(row)
        if self.grad_top:
            tot = self.grad_total or 1.0
            lines.append("outside the layers: " + ", ".join(f"{k} {100 * v / tot:.1f}%" for k, v in self.grad_top.items()))
        if p:
            lines.append(f"patching: {self.patch_probes} run(s); P(traced token) clean {self.patch_clean_p:.4f}, "
                         f"corrupted {self.patch_corrupt_p:.4f}, last-layer residual restored {self.patch_restored_p:.4f}")
        by = "; ".join(f"{k}: {v}" for k, v in self.suggested_by.items())
        lines.append(f"suggested layers: {self.suggested_layers} (smallest range holding {self.mass:.0%} of the "
                     f"per-layer profile; {by})")
        return "\n".join(lines)

    # ------------------------------------------------------------------ plot

    def save_png(self, path) -> Path:
        """Heatmaps (layers on the vertical axis) with the suggested range marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [x for x in (("grad", self.grad), ("patch", self.patch)) if x[1] is not None]
        widths = [max(3, len(self.roles) * 0.55) if k == "grad" else 2.6 for k, _ in panels]
        fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 2.5, max(4, 0.28 * self.num_layers + 1.8)),
                                 gridspec_kw={"width_ratios": widths}, squeeze=False)
        for ax, (kind, m) in zip(axes[0], panels):
            t = torch.tensor(m, dtype=torch.float32)
            if kind == "grad":
                share = t / (self.grad_total or t.sum().clamp(min=1e-30))
                im = ax.imshow(100 * share.numpy(), aspect="auto", cmap="viridis", origin="lower")
                ax.set_xticks(range(len(self.roles)), self.roles, rotation=60, ha="right", fontsize=8)
                ax.set_title("gradient |grad ⊙ W|\n(% of total)", fontsize=9)
            else:
                im = ax.imshow(t.numpy(), aspect="auto", cmap="magma", origin="lower", vmin=min(0.0, float(t.min())),
                               vmax=max(1.0, float(t.max())))
                ax.set_xticks(range(len(SITES)), SITES, rotation=60, ha="right", fontsize=8)
                ax.set_title(f"restored share\n(patching, {self.patch_mode})", fontsize=9)
            ax.set_yticks(range(self.num_layers), [str(i) for i in range(self.num_layers)], fontsize=7)
            ax.set_ylabel("layer")
            if self.suggested:
                a, b = self.suggested
                for y in (a - 0.5, b + 0.5):
                    ax.axhline(y, color="red", lw=2, clip_on=False)
            fig.colorbar(im, ax=ax, fraction=0.08, pad=0.04)
        fig.suptitle(f"{self.task} on {self.model}: suggested layers {self.suggested_layers}", fontsize=10)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _short(role: str) -> str:
    return role.replace("norm.", "n.").replace("attn.", "a.").replace("mlp.", "m.")


def _layer_share(g, total) -> list[float]:
    if not g:
        return []
    tot = total or sum(sum(r) for r in g) or 1.0
    return [sum(r) / tot for r in g]


# ----------------------------------------------------------------- entry point


def locate(ck_or_path, task: Task | str | Path, *, method: str = "both", examples: int = 8, mass: float = 0.5,
           corrupt: str = "auto", noise: float = 3.0, seed: int = 0, margin: float = 0.1,
           position: str = "last", samples: int = 1, progress: bool = False) -> LocateResult:
    """Score every layer × role for ``task`` and suggest a layer range; see the module doc.

    ``ck_or_path``: a Checkpoint, a directory, or a loaded :class:`~surgeon.runtime.Runtime`.
    ``examples``: probes used by each method (few are enough: one backward pass,
    3 × layers patched forward passes per probe). ``corrupt``: ``auto``,
    ``contrast`` (spelling tasks) or ``noise``. ``position``: where activations
    are restored — ``last`` token, or (noise only) ``subject``, the last
    corrupted token (ROME's "early site"). ``samples``: noise draws per probe
    (Meng et al. average ten; each costs one more batch of patched runs).
    """
    from .runtime import Runtime, load

    if method not in ("grad", "patch", "both"):
        raise LocateError(f"method {method!r}: choose grad, patch or both")
    if not 0 < mass <= 1:
        raise LocateError(f"mass {mass}: must be in (0, 1]")
    if examples < 1 or samples < 1:
        raise LocateError(f"examples {examples}, samples {samples}: each must be at least 1")
    if not isinstance(task, Task):
        task = Task.load(task)
    t0 = time.perf_counter()
    rt = ck_or_path if isinstance(ck_or_path, Runtime) else load(ck_or_path)
    path = getattr(rt.ck, "path", None)
    res = LocateResult(task=task.name, model=Path(path).name if path else "model", num_layers=rt.num_layers, mass=mass)
    profiles = {}
    if method in ("grad", "both"):
        _gradient(rt, task, examples, res)
        profiles["grad"] = _layer_share(res.grad, sum(sum(r) for r in res.grad))
    if method in ("patch", "both"):
        _patching(rt, task, examples, res, corrupt, noise, seed, margin, position, samples, progress)
        prof = [max(0.0, max(row[1], row[2])) for row in res.patch]
        s = sum(prof)
        if s > 0:
            profiles["patch"] = [v / s for v in prof]
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


# ----------------------------------------------------------------- probes


@dataclass
class _Probe:
    prompt: str
    target: str
    original: str | None
    subject: str | None = None


def _probes(task: Task, n: int) -> list[_Probe]:
    subjects = {e.prompt: e.subject for e in task.train if e.prompt and getattr(e, "subject", None)}
    out = [_Probe(p.prompt, p.target, p.original, subjects.get(p.prompt)) for p in task.efficacy if p.target]
    if not out:
        out = [_Probe(e.prompt, e.completion, None, getattr(e, "subject", None)) for e in task.train if e.prompt]
    if not out:
        raise LocateError(f"task {task.name}: needs efficacy probes with a target (or prompt -> completion examples)")
    return out[:n]


def _ids(rt, text: str, special: bool = True) -> list[int]:
    return rt.tokenizer(text, add_special_tokens=special)["input_ids"]


# ----------------------------------------------------------------- gradient


def _role_params(rt) -> tuple[dict[int, tuple[int | None, str]], list[str]]:
    """id(parameter) -> (layer or None, role column), through the role table and the runtime's addressing."""
    ck = rt.ck
    where: dict[int, tuple[int | None, str]] = {}
    roles: list[str] = []
    for key, ref in ck.roles.by_key.items():
        if ref.view.rows is not None:  # a part of a fused tensor: the whole is counted under its own key
            continue
        try:
            mod = rt.module(key)
        except (KeyError, SurgeonError):
            continue
        param = getattr(mod, ref.param, None)
        if not isinstance(param, torch.nn.Parameter) or id(param) in where:
            continue  # a tied lm_head is the embedding, already counted
        if ref.layer is None:
            col = ref.role
        else:
            col = "experts" if ref.expert is not None else ref.role
            if ref.param != "weight" and ref.expert is None:
                col = f"{ref.role}.{ref.param}"
            if col not in roles:
                roles.append(col)
        where[id(param)] = (ref.layer, col)
    from .roles import LAYER_ROLES

    order = {r: i for i, r in enumerate(LAYER_ROLES)}
    roles.sort(key=lambda r: (order.get(r.split(".bias")[0], 99), r))
    return where, roles


def _gradient(rt, task: Task, n: int, res: LocateResult) -> None:
    probes = _probes(task, n)
    model = rt.model
    where, roles = _role_params(rt)
    params = [p for p in model.parameters()]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    try:
        with torch.enable_grad():
            for pr in probes:
                ids_p = _ids(rt, pr.prompt)
                ids_c = _ids(rt, pr.target, special=False)
                if not ids_c:
                    continue
                ids = torch.tensor([ids_p + ids_c], device=rt.device)
                logits = model(input_ids=ids).logits[0, len(ids_p) - 1: -1].float()
                nll = torch.nn.functional.cross_entropy(logits, ids[0, len(ids_p):], reduction="sum")
                (nll / len(probes)).backward()
        grid = [[0.0] * len(roles) for _ in range(rt.num_layers)]
        col = {r: i for i, r in enumerate(roles)}
        top: dict[str, float] = {}
        total, unclassified = 0.0, []
        seen = set()
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            score = 0.0 if p.grad is None else float((p.grad.float() * p.detach().float()).abs().sum())
            total += score
            if id(p) not in where:
                unclassified.append(name)
                continue
            layer, role = where[id(p)]
            if layer is None:
                top[role] = top.get(role, 0.0) + score
            else:
                grid[layer][col[role]] += score
    finally:
        for p, r in zip(params, saved):
            p.grad = None
            p.requires_grad_(r)
    if unclassified:
        raise LocateError(f"{len(unclassified)} parameter(s) have no role, e.g. {unclassified[0]}; "
                          "the role table does not cover this model")
    res.roles, res.grad, res.grad_top, res.grad_total = roles, grid, top, total


# ----------------------------------------------------------------- patching


@torch.no_grad()
def _last_logprobs(rt, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], device=rt.device)
    logits = rt.model(input_ids=x, logits_to_keep=1).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1)


def _decision(rt, probe: _Probe) -> tuple[list[int], int, int] | None:
    """(answer tokens both share, target token, original token) at the first place they differ."""
    t = _ids(rt, probe.target, special=False)
    o = _ids(rt, probe.original, special=False) if probe.original else []
    k = 0
    while k < min(len(t), len(o)) and t[k] == o[k]:
        k += 1
    if not o:
        return t[:0], t[0], -1
    if k >= len(t) or k >= len(o):
        return None
    return t[:k], t[k], o[k]


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


def _patching(rt, task, n, res, corrupt, noise, seed, margin, position, samples, progress) -> None:
    probes = _probes(task, n)
    if corrupt in ("noise",) or (corrupt == "auto" and not task.spelling):
        probes = [p for p in probes for _ in range(max(1, samples))]
    rules = None
    if corrupt == "auto":
        corrupt = "contrast" if task.spelling else "noise"
    if corrupt == "contrast":
        if not task.spelling:
            raise LocateError(f"task {task.name}: contrast corruption needs a spelling section (its rules)")
        from . import spelling

        rules = spelling.get(task.spelling["rules"])
        ctx_t, ctx_s = _contrast_context(task, rules)
    elif corrupt != "noise":
        raise LocateError(f"corrupt {corrupt!r}: choose auto, contrast or noise")
    if position not in ("last", "subject") or (position == "subject" and corrupt == "contrast"):
        raise LocateError(f"position {position!r}: choose last, or subject with noise corruption")
    L = rt.num_layers
    points = [(f"layers.{i}", i, 0) for i in range(L)] + [(f"layers.{i}.attn", i, 1) for i in range(L)] \
        + [(f"layers.{i}.mlp", i, 2) for i in range(L)]
    sums = [[0.0] * 3 for _ in range(L)]
    used, short, p_clean, p_corrupt, p_restored = 0, 0, 0.0, 0.0, 0.0
    gen = torch.Generator().manual_seed(seed)
    it = probes
    if progress:
        from tqdm import tqdm

        it = tqdm(probes, desc="patching", unit="probe")
    for pr in it:
        d = _decision(rt, pr)
        if d is None:
            continue
        shared, tid, oid = d

        def metric(lp, tid=tid, oid=oid):
            if corrupt == "noise":  # Meng et al.: the probability of what the clean model knows
                return float(lp[oid] if oid >= 0 else lp[tid])
            return float(lp[tid] - (lp[oid] if oid >= 0 else 0.0))

        if corrupt == "contrast":
            clean_ids = _ids(rt, (ctx_t + " " + rules.convert(pr.prompt)).strip()) + shared
            bad_ids = _ids(rt, (ctx_s + " " + rules.source(pr.prompt)).strip()) + shared
            bad_patch, at = None, -1
        else:
            clean_ids = bad_ids = _ids(rt, pr.prompt) + shared
            pos = _noise_positions(rt, pr, len(clean_ids))
            if not pos:  # a one-token prompt: nothing before the last token to corrupt
                short += 1
                continue
            bad_patch = _noise_patch(rt, clean_ids, pos, noise, gen)
            at = pos[-1] if position == "subject" else -1
        with rt.capture([p for p, _, _ in points]) as clean_acts:
            lp_clean = _last_logprobs(rt, clean_ids)
        clean_acts = {k: v[:, at].clone() for k, v in clean_acts.items()}
        lp_bad = _run(rt, bad_ids, bad_patch)
        m_clean, m_bad = metric(lp_clean), metric(lp_bad)
        if abs(m_clean - m_bad) < margin:
            continue
        used += 1
        tok = oid if corrupt == "noise" and oid >= 0 else tid  # the token the metric follows
        p_clean += math.exp(float(lp_clean[tok]))
        p_corrupt += math.exp(float(lp_bad[tok]))
        lps = _run_restored(rt, bad_ids, bad_patch, [(p, clean_acts[p]) for p, _, _ in points], at)
        for (point, layer, site), lp in zip(points, lps):
            sums[layer][site] += (metric(lp) - m_bad) / (m_clean - m_bad)
            if point == f"layers.{L - 1}":
                p_restored += math.exp(float(lp[tok]))
    if not used:
        why = f"; {short} probe(s) skipped: a one-token prompt has nothing to corrupt" if short else ""
        raise LocateError(f"task {task.name}: no probe shows a clean-vs-corrupted difference above {margin} nats "
                          f"({corrupt} corruption{why}); nothing to trace")
    res.patch = [[v / used for v in row] for row in sums]
    res.patch_mode, res.patch_probes = corrupt + ("" if position == "last" else ", subject token"), used
    res.patch_clean_p, res.patch_corrupt_p, res.patch_restored_p = p_clean / used, p_corrupt / used, p_restored / used


def _noise_positions(rt, pr: _Probe, length: int) -> list[int]:
    """Token positions of the subject (its characters' tokens), else every position but the last."""
    if pr.subject and pr.subject in pr.prompt:
        start = pr.prompt.index(pr.subject)
        end = start + len(pr.subject)
        enc = rt.tokenizer(pr.prompt, return_offsets_mapping=True)
        pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start and a < end and b > a]
        if pos:
            return pos
    bos = 1 if rt.tokenizer.bos_token_id is not None and _ids(rt, "a")[:1] == [rt.tokenizer.bos_token_id] else 0
    return list(range(bos, length - 1))


def _noise_patch(rt, ids, positions, scale, gen):
    """A function adding fixed Gaussian noise (``scale`` × std of this prompt's embeddings) at ``positions``."""
    with rt.capture(["embed"]) as acts:
        _last_logprobs(rt, ids)
    emb = acts["embed"]
    std = float(emb[0].float().std())
    eps = torch.randn((len(positions), emb.shape[-1]), generator=gen) * scale * std
    idx = torch.tensor(positions, dtype=torch.long)

    def fn(x):
        x = x.clone()
        x[:, idx] = x[:, idx] + eps.to(x.dtype).to(x.device)
        return x

    fn.touches_last = len(ids) - 1 in positions
    return fn


def _run(rt, ids, bad_patch) -> torch.Tensor:
    """The corrupted run's last-position log-probs."""
    if bad_patch is None:
        return _last_logprobs(rt, ids)
    with rt.patch("embed", bad_patch):
        return _last_logprobs(rt, ids)


@torch.no_grad()
def _run_restored(rt, ids, bad_patch, restores, at: int = -1, chunk: int = 64) -> list[torch.Tensor]:
    """The corrupted run once per ``(point, clean activation)``, each with that one activation restored
    at position ``at``. Batched: row j of a batch restores only its own point."""
    from contextlib import ExitStack

    out = []
    prefix = None
    if at in (-1, len(ids) - 1) and len(ids) > 1 and not getattr(bad_patch, "touches_last", False):
        prefix = _prefix_cache(rt, ids, bad_patch)  # every earlier position is the corrupted run's
    for c in range(0, len(restores), chunk):
        part = restores[c:c + chunk]
        kw = {}
        if prefix is None:
            x = torch.tensor([ids] * len(part), device=rt.device)
        else:
            import copy

            x = torch.tensor([ids[-1:]] * len(part), device=rt.device)
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(part))
            kw = {_cache_kw(rt): cache, "use_cache": True}
        with ExitStack() as stack:
            if bad_patch is not None and prefix is None:
                stack.enter_context(rt.patch("embed", bad_patch))
            rows: dict[str, list[tuple[int, torch.Tensor]]] = {}
            for j, (point, value) in enumerate(part):
                rows.setdefault(point, []).append((j, value))
            for point, items in rows.items():
                def put(h, items=items):
                    h = h.clone()
                    for j, value in items:
                        h[j, at] = value[0].to(h.dtype)
                    return h

                stack.enter_context(rt.patch(point, put))
            logits = rt.model(input_ids=x, logits_to_keep=1, **kw).logits[:, -1]
        out.extend(torch.log_softmax(logits.float(), dim=-1))
    return out


@torch.no_grad()
def _prefix_cache(rt, ids, bad_patch):
    """The KV cache of the corrupted run over every position but the last."""
    from contextlib import nullcontext

    from transformers import DynamicCache

    cache = DynamicCache(config=rt.model.config)
    with rt.patch("embed", bad_patch) if bad_patch is not None else nullcontext():
        rt.model(input_ids=torch.tensor([ids[:-1]], device=rt.device), use_cache=True, logits_to_keep=1,
                 **{_cache_kw(rt): cache})
    return cache


def _cache_kw(rt) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(rt.model.forward).parameters else "past_key_values"
