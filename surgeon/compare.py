"""Edit by hand or fine-tune, and which layers? Several ways to make one change, side by side.

``compare(task, model, ["rome=edit:rome_arm.py layer=6", "lora_early=lora layers=0-6", "none"], out)``
makes each *arm* from the same original checkpoint, measures it with
:mod:`surgeon.measure` against the original (whose outputs are computed once),
and writes ``report.json``, ``report.md`` (one table, arms as rows) and
``report.png``.

An arm spec is one or more stages joined by `` + `` (edit then fine-tune):

* ``none`` — the original itself (a row of the table, cost zero);
* ``edit:PATH k=v ...`` — an edit script (``edit(ck, **params)``, as
  ``surgeon apply`` runs it); values parse as JSON where they can. If the
  script's ``edit`` takes a ``task`` parameter it receives the task file's
  path;
* ``lora k=v ...`` / ``full k=v ...`` — a fine-tune
  (:class:`surgeon.finetune.FinetuneConfig` fields: ``layers=0-6``,
  ``roles=attn+mlp``, ``rank``, ``alpha``, ``steps``, ``lr``, ``seed``,
  ``batch``, ``max_length``, ``max_delta``). ``layers=auto`` asks
  :func:`surgeon.locate.suggest_layers` (``layers=auto:METHOD`` passes a
  method), through the :data:`LAYER_RESOLVERS` hook.

Each arm runs in its own child process (``python -m surgeon.compare JOB``),
so its wall time and peak resident memory are its own, not the parent's
accumulated state; the child saves the arm's checkpoint, the parent measures
it.
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SurgeonError
from .task import Task

FINETUNE_KEYS = ("layers", "roles", "rank", "alpha", "steps", "lr", "seed", "batch", "max_length", "max_delta")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


class CompareError(SurgeonError):
    """An arm spec that cannot be parsed or run."""


@dataclass
class Stage:
    kind: str  # none | edit | lora | full
    script: str | None = None
    params: dict = field(default_factory=dict)


@dataclass
class Arm:
    name: str
    spec: str
    stages: list[Stage]


# ----------------------------------------------------------------- specs


def parse_arm(text: str) -> Arm:
    """``"NAME=SPEC"`` (or a bare ``"none"``) -> Arm."""
    text = text.strip()
    if text == "none":
        return Arm("none", "none", [Stage("none")])
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not NAME_RE.fullmatch(name):
        raise CompareError(f"arm {text!r}: expected NAME=SPEC with NAME of letters, digits, _ . -")
    return Arm(name, spec.strip(), parse_spec(spec))


def parse_spec(spec: str) -> list[Stage]:
    from .apply import parse_params

    parts = [p.strip() for p in re.split(r"\s\+\s", spec.strip())]
    stages = []
    for part in parts:
        words = part.split()
        if not words:
            raise CompareError(f"arm spec {spec!r}: empty stage")
        head, rest = words[0], words[1:]
        try:
            params = parse_params(rest)
        except SurgeonError as e:
            raise CompareError(f"arm spec {spec!r}: {e}") from None
        if head == "none":
            if rest or len(parts) > 1:
                raise CompareError(f"arm spec {spec!r}: none takes no parameters and stands alone")
            stages.append(Stage("none"))
        elif head.startswith("edit:"):
            script = head[len("edit:"):]
            if not script:
                raise CompareError(f"arm spec {spec!r}: edit: needs a script path")
            stages.append(Stage("edit", script, params))
        elif head in ("lora", "full"):
            unknown = set(params) - set(FINETUNE_KEYS)
            if unknown:
                raise CompareError(f"arm spec {spec!r}: unknown {head} option(s) {', '.join(sorted(unknown))} "
                                   f"(known: {', '.join(FINETUNE_KEYS)})")
            for k in ("layers", "roles"):
                if k in params and not isinstance(params[k], (str, list)):
                    params[k] = str(params[k])
            stages.append(Stage(head, None, params))
        else:
            raise CompareError(f"arm spec {spec!r}: stage {head!r} is not none, edit:PATH, lora or full")
    return stages


def _locate_auto(model, task: Task, method: str | None = None) -> list[int]:
    try:
        from .locate import suggest_layers
    except ImportError:
        raise CompareError("layers=auto needs surgeon.locate.suggest_layers, which is not available") from None
    return list(suggest_layers(model, task, method=method) if method else suggest_layers(model, task))


# name -> fn(model, task, method) returning layer indices; ``locate`` may register more
LAYER_RESOLVERS: dict[str, Callable] = {"auto": _locate_auto}


def expand_arm(arm: Arm, *, task: Task, model) -> Arm:
    """Resolve symbolic layer choices (``layers=auto``) into layer lists, before the arm runs."""
    stages = []
    for st in arm.stages:
        lay = st.params.get("layers")
        if st.kind in ("lora", "full") and isinstance(lay, str):
            key, _, method = lay.partition(":")
            if key in LAYER_RESOLVERS:
                layers = LAYER_RESOLVERS[key](model, task, method or None)
                st = Stage(st.kind, st.script, {**st.params, "layers": [int(x) for x in layers],
                                                "layers_from": lay})
        stages.append(st)
    return Arm(arm.name, arm.spec, stages)


def _check_finetunes(arms: list[Arm], ck, task: Task) -> None:
    from .finetune import FinetuneConfig, check

    for a in arms:
        for st in a.stages:
            if st.kind not in ("lora", "full"):
                continue
            if not task.train:
                raise CompareError(f"arm {a.name}: task {task.name} has no training examples to fine-tune on")
            p = {k: v for k, v in st.params.items() if k in FINETUNE_KEYS}
            try:
                check(ck, FinetuneConfig(method=st.kind, **p))
            except (SurgeonError, TypeError, ValueError) as e:
                raise CompareError(f"arm {a.name}: {e}") from None


def _takes_task(script: Path) -> bool:
    """Does the script's ``edit`` accept a ``task`` parameter? (read with ast, not run)"""
    try:
        tree = ast.parse(script.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "edit":
            names = [a.arg for a in node.args.args + node.args.kwonlyargs]
            return "task" in names
    return False


# ----------------------------------------------------------------- the child


def run_arm(job: dict) -> dict:
    """Make one arm's checkpoint from the original (runs in the child process)."""
    import resource

    import torch

    from .apply import run_script
    from .checkpoint import open_checkpoint
    from .finetune import FinetuneConfig, finetune

    torch.set_num_threads(max(1, int(os.environ.get("SURGEON_THREADS", os.cpu_count() or 1))))
    t0 = time.perf_counter()
    ck = open_checkpoint(job["model"])
    task = Task.load(job["task"])
    sources, finetunes = [], []
    for st in job["stages"]:
        if st["kind"] == "edit":
            params = dict(st["params"])
            if "task" not in params and _takes_task(Path(st["script"])):
                params["task"] = job["task"]
            sources.append(run_script(ck, st["script"], params))
        else:
            p = {k: v for k, v in st["params"].items() if k in FINETUNE_KEYS}
            r = finetune(ck, task, FinetuneConfig(method=st["kind"], **p), progress=False)
            d = r.to_dict()
            d.pop("losses")
            d["loss_first"], d["loss_last"] = r.losses[0], r.losses[-1]
            finetunes.append(d)
            sources.append({"kind": "finetune", **d["config"], "layers_from": st["params"].get("layers_from")})
    changed = _elements_changed(ck)
    manifest = ck.save(job["out"], overwrite=True,
                       source={"kind": "compare-arm", "arm": job["name"], "spec": job["spec"], "stages": sources})
    wall = time.perf_counter() - t0
    linked = set(manifest["files"]["linked"])
    written = sum(p.stat().st_size for p in Path(job["out"]).rglob("*")
                  if p.is_file() and p.relative_to(job["out"]).as_posix() not in linked)
    return {"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params_changed": changed, "tensors_changed": len(manifest["tensors"]), "bytes_written": written,
            "finetune": finetunes, "notes": [n for f in finetunes for n in f["notes"]]}


def _elements_changed(ck) -> int:
    n = 0
    for name, new in ck.staged.items():
        if name in ck.added:
            n += new.numel()
            continue
        old = ck.original(name)
        if tuple(old.shape) != tuple(new.shape):  # grown (added vocabulary rows): new rows all count
            rows = min(old.shape[0], new.shape[0])
            n += int((new[:rows] != old[:rows]).sum()) + (new.numel() - new[:rows].numel())
        else:
            n += int((new != old).sum())
    return n


# ----------------------------------------------------------------- the parent


def compare(task: Task | str | Path, model, arms: list[str | Arm], out_dir, *, keep_checkpoints: bool = False,
            overwrite: bool = False, progress: bool = True, timeout_s: float | None = None) -> dict:
    """Run every arm from ``model``, measure each against the original, write the report; returns it."""
    from . import measure
    from .checkpoint import open_checkpoint
    from .runtime import load
    from .save import check_outside

    task = task if isinstance(task, Task) else Task.load(task)
    arms = [a if isinstance(a, Arm) else parse_arm(a) for a in arms]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise CompareError(f"arm names must be unique: {', '.join(names)}")
    model = Path(model).absolute()
    ck0 = open_checkpoint(model)  # fail early on a bad input
    out = Path(out_dir).absolute()
    check_outside(model, out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CompareError(f"{out}: already exists and is not empty (pass overwrite=True / --overwrite)")
    if not (task.efficacy or task.generalisation or task.specificity or task.neutral or task.spelling):
        raise CompareError(f"task {task.name}: nothing to measure (no efficacy, generalisation or specificity "
                           f"probes, neutral text or spelling section)")
    for a in arms:
        for st in a.stages:
            if st.kind == "edit" and not Path(st.script).is_file():
                raise CompareError(f"arm {a.name}: edit script {st.script} not found")
    arms = [expand_arm(a, task=task, model=model) for a in arms]
    _check_finetunes(arms, ck0, task)  # every arm's layers × roles and numbers, before any arm runs
    out.mkdir(parents=True, exist_ok=True)
    work = out / "arms"
    work.mkdir(exist_ok=True)
    task_file = out / "task.json"
    task_file.write_text(json.dumps(task.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    def say(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)

    say(f"compare: measuring the original {model.name} on task {task.name}")
    t0 = time.perf_counter()
    rt0 = load(model)
    ref = measure.reference(rt0, task)
    original_metrics = measure.measure(rt0, task, ref)
    ref_s = time.perf_counter() - t0
    del rt0

    rows = []
    for a in arms:
        row = {"name": a.name, "spec": a.spec, "stages": [asdict(s) for s in a.stages], "error": None}
        if [s.kind for s in a.stages] == ["none"]:
            row["metrics"] = original_metrics.to_dict(details=False)
            row["details"] = original_metrics.details
            row["cost"] = {"wall_s": 0.0, "peak_rss_mb": None, "params_changed": 0, "tensors_changed": 0,
                           "bytes_written": 0, "finetune": [], "notes": []}
            rows.append(row)
            continue
        say(f"compare: arm {a.name}: {a.spec}")
        ckpt = work / a.name
        job = {"name": a.name, "spec": a.spec, "model": str(model), "task": str(task_file), "out": str(ckpt),
               "stages": [{"kind": s.kind, "script": str(Path(s.script).absolute()) if s.script else None,
                           "params": s.params} for s in a.stages]}
        job_file = work / f"{a.name}.job.json"
        job_file.write_text(json.dumps(job, indent=1) + "\n")
        log = work / f"{a.name}.log"
        t = time.perf_counter()
        try:
            with open(log, "w") as lf:
                proc = subprocess.run([sys.executable, "-m", "surgeon.compare", str(job_file)], stdout=lf,
                                      stderr=subprocess.STDOUT, timeout=timeout_s, env=_child_env(), check=False)
            result_file = work / f"{a.name}.result.json"
            if proc.returncode != 0 or not result_file.is_file():
                tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                raise CompareError(tail[-1] if tail else f"child exited {proc.returncode}")
            cost = json.loads(result_file.read_text())
            cost["process_s"] = time.perf_counter() - t
            m = measure.measure(ckpt, task, ref)
            row["metrics"] = m.to_dict(details=False)
            row["details"] = m.details
            row["cost"] = cost
        except (CompareError, subprocess.TimeoutExpired, SurgeonError) as e:
            msg = f"timed out after {timeout_s} s" if isinstance(e, subprocess.TimeoutExpired) else str(e)
            row["error"] = msg
            say(f"compare: arm {a.name} failed: {msg}")
        finally:
            if not keep_checkpoints and ckpt.exists():
                shutil.rmtree(ckpt, ignore_errors=True)
        rows.append(row)

    report = {
        "task": task.name, "task_path": str(task.path) if task.path else None, "model": str(model),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": int(os.environ.get("SURGEON_THREADS", os.cpu_count() or 1)),
        "reference_s": ref_s, "counts": _counts(task), "arms": rows,
    }
    report["reading"] = reading(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "report.png")
    return report


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _counts(task: Task) -> dict:
    return {"train": len(task.train), "efficacy": len(task.efficacy), "generalisation": len(task.generalisation),
            "specificity": len(task.specificity), "neutral": len(task.neutral),
            "spelling": len((task.spelling or {}).get("prompts", []))}


# ----------------------------------------------------------------- the report

COLUMNS = [  # (metric key, header, format)
    ("efficacy", "efficacy", "{:.2f}"),
    ("efficacy_p", "P(target)", "{:.2f}"),
    ("generalisation", "generalisation", "{:.2f}"),
    ("generalisation_p", "P(target) held-out", "{:.2f}"),
    ("specificity", "specificity", "{:.2f}"),
    ("neighbourhood", "neighbourhood", "{:.2f}"),
    ("kl", "KL", "{:.4f}"),
    ("perplexity_ratio", "ppl ×", "{:.3f}"),
    ("spelling", "spelling", "{:.2f}"),
]


def _present(report, key) -> bool:
    return any(r.get("metrics", {}).get(key) is not None for r in report["arms"])


def markdown(report: dict) -> str:
    cols = [c for c in COLUMNS if _present(report, c[0])]
    head = ["arm"] + [c[1] for c in cols] + ["wall s", "peak MB", "params changed", "MB written"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["arms"]:
        if r["error"]:
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        m, c = r["metrics"], r["cost"]
        cells = [r["name"]] + ["–" if m.get(k) is None else f.format(m[k]) for k, _, f in cols]
        cells += [f"{c['wall_s']:.1f}", "–" if c["peak_rss_mb"] is None else f"{c['peak_rss_mb']:.0f}",
                  f"{c['params_changed']:,}", f"{c['bytes_written'] / 1e6:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    specs = "\n".join(f"- `{r['name']}`: `{r['spec']}`" for r in report["arms"])
    n = report["counts"]
    return (f"# {report['task']} on {Path(report['model']).name}\n\n" + "\n".join(lines) + "\n\n"
            f"{report['reading']}\n\n"
            f"Probes: {n['efficacy']} efficacy, {n['generalisation']} held-out, {n['specificity']} specificity, "
            f"{n['neutral']} neutral texts; {n['train']} training examples. Wall time and peak memory are each "
            f"arm's own child process (load, change, save), on {report['threads']} thread(s).\n\nArms:\n{specs}\n")


def reading(report: dict) -> str:
    """One honest paragraph from the numbers: who wins on what, and at what price."""
    ok = [r for r in report["arms"] if not r["error"]]
    changed = [r for r in ok if r["cost"]["params_changed"] > 0]
    failed = [r["name"] for r in report["arms"] if r["error"]]
    if not changed:
        return "No arm changed the model." + (f" Failed: {', '.join(failed)}." if failed else "")
    out = []

    def best(key, higher=True, pool=changed):
        vals = [(r["metrics"][key], r["name"]) for r in pool if r["metrics"].get(key) is not None]
        if not vals:
            return None
        v = max(vals)[0] if higher else min(vals)[0]
        return v, [n for x, n in vals if math.isclose(x, v, rel_tol=1e-9, abs_tol=1e-12)]

    for key, label in (("efficacy", "efficacy"), ("generalisation", "generalisation (held-out prompts)"),
                       ("spelling", "target-spelling rate")):
        b = best(key)
        if b:
            if key == "spelling":
                out.append(f"Best {label}: {', '.join(b[1])} ({b[0]:.2f}).")
                continue
            ps = ", ".join(f"{r['name']} {r['metrics'][key + '_p']:.2f}"
                           for r in sorted(changed, key=lambda r: -r["metrics"][key + "_p"]) if r["name"] in b[1])
            out.append(f"Best {label}: {', '.join(b[1])} ({b[0]:.2f} of prompts flipped; mean P(target) {ps}).")
    b = best("kl", higher=False)
    if b:
        worst = best("kl", higher=True)
        out.append(f"Least collateral damage on neutral text: {', '.join(b[1])} (KL {b[0]:.4f}); "
                   f"most: {', '.join(worst[1])} (KL {worst[0]:.4f}).")
    for key, label in (("specificity", "changed the top-1 answer on specificity prompts"),
                       ("neighbourhood", "lost neighbour facts")):
        hurt = [f"{r['name']} ({r['metrics'][key]:.2f})" for r in changed
                if r["metrics"].get(key) is not None and r["metrics"][key] < 1.0]
        if hurt:
            out.append(f"{label[0].upper() + label[1:]}: {', '.join(hurt)}.")
    missed = [f"{r['name']} ({r['metrics']['efficacy']:.2f})" for r in changed
              if r["metrics"].get("efficacy") is not None and r["metrics"]["efficacy"] < 1.0]
    if missed:
        out.append(f"Did not flip every efficacy prompt: {', '.join(missed)}.")
    fast = min(changed, key=lambda r: r["cost"]["wall_s"])
    slow = max(changed, key=lambda r: r["cost"]["wall_s"])
    out.append(f"Cheapest: {fast['name']} ({fast['cost']['wall_s']:.1f} s, "
               f"{fast['cost']['params_changed']:,} parameters changed); slowest: {slow['name']} "
               f"({slow['cost']['wall_s']:.1f} s).")
    notes = sorted({n for r in changed for n in r["cost"].get("notes", [])})
    if notes:
        out.append("Notes: " + "; ".join(notes) + ".")
    if failed:
        out.append(f"Failed arms: {', '.join(failed)}.")
    return " ".join(out)


def plot(report: dict, path) -> None:
    """Shares (efficacy, generalisation, specificity, ...) per arm, KL per arm, wall time per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["arms"] if not r["error"]]
    names = [r["name"] for r in ok]
    shares = [(k, lbl) for k, lbl in (("efficacy", "efficacy"), ("generalisation", "generalisation"),
                                      ("specificity", "specificity"), ("neighbourhood", "neighbourhood"),
                                      ("spelling", "spelling")) if _present(report, k)]
    fig, axes = plt.subplots(1, 3, figsize=(4 + 1.6 * max(len(names), 2) * 1.5, 4.2),
                             gridspec_kw={"width_ratios": [2, 1, 1]})
    ax = axes[0]
    width = 0.8 / max(len(shares), 1)
    for i, (k, lbl) in enumerate(shares):
        vals = [r["metrics"].get(k) or 0.0 for r in ok]
        ax.bar([x + i * width for x in range(len(ok))], vals, width, label=lbl)
    ax.set_xticks([x + width * (len(shares) - 1) / 2 for x in range(len(ok))], names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of prompts")
    ax.set_title("does it work, does it spread", pad=24)
    if shares:
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(shares), frameon=False)
    kls = [r["metrics"].get("kl") or 0.0 for r in ok]
    axes[1].bar(names, kls, color="tab:red")
    axes[1].set_title("KL(original ‖ arm), neutral text")
    if any(k > 0 for k in kls):
        axes[1].set_yscale("symlog", linthresh=max(min(k for k in kls if k > 0), 1e-5))
    axes[2].bar(names, [r["cost"]["wall_s"] for r in ok], color="tab:gray")
    axes[2].set_title("wall time (s)")
    for a in axes[1:]:
        a.tick_params(axis="x", rotation=30)
        for lab in a.get_xticklabels():
            lab.set_ha("right")
    fig.suptitle(f"{report['task']} on {Path(report['model']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _main(argv: list[str]) -> int:
    job_file = Path(argv[0])
    job = json.loads(job_file.read_text())
    result = run_arm(job)
    job_file.with_name(f"{job['name']}.result.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":  # the child process of one arm
    sys.exit(_main(sys.argv[1:]))
