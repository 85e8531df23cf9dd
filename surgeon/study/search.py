"""Equal tuning budget for every arm family: each family's knobs, searched with Optuna on validation.

A single untuned point per family proves little: a LoRA whose one learning
rate overshoots loses to an edit whose layer was chosen with care. Here each
family gets the same number of trials, a multi-objective TPE search
(Optuna; Ozaki et al. 2020, "Multiobjective tree-structured Parzen estimator
for computationally expensive optimization problems") over its knobs with two
objectives: generated success on the *validation* split up, KL on the
validation split's neutral text down. The test split is never shown to the
search: the caller hands :func:`search` an ``evaluate`` that measures on
validation only, and picks points from the validation front (:func:`front`,
:func:`matched`) before anything is measured on test.

Knobs are declared once, here for the fine-tunes (:data:`KNOBS`) and in each
edit script as a module-level ``KNOBS`` dict (read without running the
script). A knob is ``[kind, ...]``:

* ``["int", lo, hi]`` or ``["int", lo, hi, step]``; ``["float", lo, hi]``;
  ``["log", lo, hi]`` (log-uniform);
* ``["choice", a, b, ...]``;
* ``["span", min_len, max_len]`` — a contiguous layer range (``"3-7"``) that
  fits the model.

Parameters the arm spec sets itself are pinned: ``lora layers=0-6`` searches
rank, lr and steps but keeps layers 0-6.
"""

from __future__ import annotations

import ast
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna

from surgeon.errors import SurgeonError
from surgeon.study.arms import Arm, CompareError, Stage
from surgeon.study.config import parse_roles
from surgeon.study.train import TOP

KNOBS: dict[str, dict[str, list]] = {
    "lora": {"layers": ["span", 1, 8], "rank": ["choice", 2, 4, 8, 16], "lr": ["log", 1e-4, 3e-3],
             "steps": ["int", 10, 80, 10]},
    "full": {"layers": ["span", 1, 1], "lr": ["log", 1e-5, 1e-3], "max_delta": ["log", 1e-4, 2e-2],
             "steps": ["int", 10, 80, 10]},
}
KL_LEVELS = (0.01, 0.05, 0.2)  # the matched-damage table's columns: KL on neutral text, nats
KL_FLOOR = 1e-6  # the search minimises log10(KL + this)
SUCCESS_KEYS = ("generalisation_gen", "efficacy_gen", "spelling", "generalisation", "efficacy")


def success(metrics: dict) -> tuple[str, float] | None:
    """The headline success of a task's metrics: generated success on held-out probes first."""
    for k in SUCCESS_KEYS:
        if metrics.get(k) is not None:
            return k, float(metrics[k])
    return None


# ----------------------------------------------------------------- knobs


def script_knobs(script) -> dict:
    """The ``KNOBS = {...}`` literal of an edit script, read with ast (the script is not run)."""
    try:
        tree = ast.parse(Path(script).read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "KNOBS" for t in node.targets):
            try:
                return dict(ast.literal_eval(node.value))
            except ValueError:
                raise CompareError(f"{script}: KNOBS must be a literal dict of knob specs") from None
    return {}


def knobs_of(arm: Arm) -> dict[str, tuple[int, str, list]]:
    """Searchable knobs of an arm: ``"name"`` (or ``"s1.name"`` for a later stage) -> (stage, param, spec)."""
    out = {}
    for i, st in enumerate(arm.stages):
        declared = KNOBS.get(st.kind, {}) if st.kind != "edit" else script_knobs(st.script)
        for name, spec in declared.items():
            if name in st.params:
                continue  # pinned by the arm spec
            if name == "layers" and st.kind != "edit" and _top_level_only(st.params.get("roles")):
                continue  # lm_head / embed / final_norm live in no layer: nothing to search
            _check_spec(arm.name, name, spec)
            out[name if len(arm.stages) == 1 else f"s{i}.{name}"] = (i, name, list(spec))
    return out


def _top_level_only(roles) -> bool:
    """Whether a fine-tune's roles are all top-level tensors (``lm_head``, ``embed``, ``final_norm``)."""
    return bool(roles) and set(parse_roles(roles)) <= set(TOP)


def _check_spec(arm: str, name: str, spec) -> None:
    ok = isinstance(spec, (list, tuple)) and spec and spec[0] in ("int", "float", "log", "choice", "span")
    if ok and spec[0] == "choice":
        ok = len(spec) >= 2
    elif ok:
        ok = len(spec) in (3, 4) and all(isinstance(x, (int, float)) for x in spec[1:]) and spec[1] <= spec[2]
    if not ok:
        raise CompareError(f"arm {arm}: knob {name} spec {spec!r}: expected [int|float|log, lo, hi], "
                           f"[choice, a, b, ...] or [span, min_len, max_len]")


def suggest(trial: optuna.Trial, knobs: dict, num_layers: int) -> dict[str, object]:
    """One value per knob from the trial (a span becomes ``"start-end"``, fixed distributions)."""
    out = {}
    for key, (_, _, spec) in knobs.items():
        kind = spec[0]
        if kind == "int":
            out[key] = trial.suggest_int(key, spec[1], spec[2], step=spec[3] if len(spec) > 3 else 1)
        elif kind == "float":
            out[key] = float(f"{trial.suggest_float(key, spec[1], spec[2]):.3g}")
        elif kind == "log":
            out[key] = float(f"{trial.suggest_float(key, spec[1], spec[2], log=True):.3g}")
        elif kind == "choice":
            out[key] = trial.suggest_categorical(key, list(spec[1:]))
        else:  # span
            lo, hi = int(spec[1]), min(int(spec[2]), num_layers)
            n = trial.suggest_int(f"{key}.len", lo, hi)
            start = min(trial.suggest_int(f"{key}.start", 0, num_layers - lo), num_layers - n)
            out[key] = f"{start}-{start + n - 1}" if n > 1 else str(start)
    return out


def with_params(arm: Arm, knobs: dict, values: dict, name: str) -> Arm:
    """The arm with the knob values filled in (and its spec rewritten to say so)."""
    stages = [Stage(s.kind, s.script, dict(s.params)) for s in arm.stages]
    for key, v in values.items():
        i, param, _ = knobs[key]
        stages[i].params[param] = v
    return Arm(name, spec_text(stages), stages)


def spec_text(stages: list[Stage]) -> str:
    def one(s: Stage) -> str:
        head = f"edit:{s.script}" if s.kind == "edit" else s.kind
        return " ".join([head] + [f"{k}={_fmt(v)}" for k, v in s.params.items() if k != "layers_from"])

    return " + ".join(one(s) for s in stages)


def _fmt(v) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v))
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------- the search


@dataclass
class Trial:
    """One point of a family's search, measured on validation."""

    number: int
    spec: str
    params: dict
    success: float | None = None
    kl: float | None = None
    metrics: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.success is not None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Search:
    """A family's trials and what the search itself cost."""

    family: str
    knobs: dict
    trials: list[Trial]
    wall_s: float
    peak_rss_mb: float | None

    def to_dict(self) -> dict:
        return {"family": self.family, "knobs": {k: v[2] for k, v in self.knobs.items()},
                "trials": [t.to_dict() for t in self.trials], "wall_s": self.wall_s, "peak_rss_mb": self.peak_rss_mb,
                "front": [t.number for t in front(self.trials)],
                "matched": {str(k): (t.number if t else None) for k, t in matched(self.trials).items()}}


def search(arm: Arm, budget: int, evaluate: Callable[[Arm], tuple[dict, dict]], *, num_layers: int,
           seed: int = 0, say: Callable[[str], None] = lambda m: None) -> Search:
    """``budget`` trials of ``arm``'s family; ``evaluate(arm) -> (validation metrics, cost)``.

    ``evaluate`` raises :class:`SurgeonError` for a trial that fails (it is
    told to Optuna as failed and the search goes on). A family with no knob
    left to search (all pinned, or an edit script without ``KNOBS``) runs once.
    """
    knobs = knobs_of(arm)
    if not knobs:
        budget = 1  # nothing to search: one run is the family (repeats would only measure the same point)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(5, budget // 3)), multivariate=True)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    trials, t0 = [], time.perf_counter()
    for i in range(budget):
        ot = study.ask()
        values = suggest(ot, knobs, num_layers)
        a = with_params(arm, knobs, values, f"{arm.name}.t{i}")
        t = Trial(i, a.spec, values)
        try:
            metrics, t.cost = evaluate(a)
            got = success(metrics)
            t.metrics, t.kl = metrics, float(metrics.get("kl") or 0.0)
            t.success = got[1] if got else None
        except SurgeonError as e:
            t.error = str(e)
        trials.append(t)
        if t.ok:
            study.tell(ot, [t.success, math.log10(t.kl + KL_FLOOR)])
        else:
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
        say(_progress(arm.name, i, budget, t, trials))
    rss = [t.cost.get("peak_rss_mb") for t in trials if t.cost.get("peak_rss_mb")]
    return Search(arm.name, knobs, trials, time.perf_counter() - t0, max(rss) if rss else None)


def _progress(family: str, i: int, budget: int, t: Trial, trials: list[Trial]) -> str:
    knobs = " ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    got = f"failed: {t.error}" if not t.ok else f"success {t.success:.2f} KL {t.kl:.4f}"
    ok = [x for x in trials if x.ok]
    best = max(ok, key=lambda x: (x.success, -x.kl)) if ok else None
    so_far = f"best so far {best.success:.2f} at KL {best.kl:.4f} (trial {best.number})" if best else "no success yet"
    return f"compare: {family} trial {i + 1} of {budget}: {got} ({knobs}); {so_far}; front {len(front(trials))}"


# ----------------------------------------------------------------- choosing on validation


def front(trials: list[Trial]) -> list[Trial]:
    """The Pareto front on validation: trials no other trial beats on success without more KL."""
    ok = [t for t in trials if t.ok]
    out = [t for t in ok if not any((o.success >= t.success and o.kl <= t.kl)
                                    and (o.success > t.success or o.kl < t.kl) for o in ok)]
    seen, uniq = set(), []
    for t in sorted(out, key=lambda t: (t.kl, -t.success)):
        if (t.success, t.kl) not in seen:
            seen.add((t.success, t.kl))
            uniq.append(t)
    return uniq


def matched(trials: list[Trial], levels=KL_LEVELS) -> dict[float, Trial | None]:
    """Per KL level: the trial with the best *validation* success among those with validation KL ≤ level."""
    ok = [t for t in trials if t.ok]
    out = {}
    for lvl in levels:
        under = [t for t in ok if t.kl <= lvl]
        out[lvl] = max(under, key=lambda t: (t.success, -t.kl)) if under else None
    return out
