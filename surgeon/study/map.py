"""``surgeon map``: the map of intervention — for each behaviour, where to act and how, measured.

For every task it runs the budgeted comparison (:func:`surgeon.study.tuned.compare_tuned`:
each family tuned on validation, chosen points measured on test) and reads one
row off its matched-damage table at :data:`LEVEL`: the family with the best
test success among the points chosen (on validation) for KL ≤ LEVEL, its site
(the chosen knobs: layers × roles, an edit's layer), the runner-up, and
whether the common advice for that behaviour holds.

A task declares its entry in a ``"map"`` object (docs/tasks.md)::

    "map": {"behaviour": "facts", "advice": "mid-layer MLPs", "advice_arm": "rome",
            "arms": ["none", "rome=edit:examples/fact_edit/rome_arm.py", "lora=lora roles=attn+mlp"],
            "model": "smollm2"}

Without one, the arms are :data:`DEFAULT_ARMS` and the advice is not judged. ``model`` (a
fixture name or a path) runs the task on the model it is written for (pre-reform Russian on
Gemma-3, the English tasks on SmolLM2); without it, the map's ``--model``. A task whose report
already exists for the same model, budget and seeds is read back, not run again, so a map
that stopped resumes at the task it was on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.fixtures import FIXTURES, fixture
from surgeon.study.search import success
from surgeon.study.task import Task
from surgeon.study.tuned import compare_tuned

LEVEL = 0.05  # the map's collateral-damage budget: KL on neutral text, nats
DEFAULT_ARMS = ["none", "lora=lora roles=attn+mlp", "full=full roles=mlp.down"]
TIE = 0.05  # success within this of the best counts as "as good" for the verdict


def ranked(report: dict, level: float) -> list[dict]:
    """Each family's point chosen on validation for KL ≤ ``level``, as measured on test, best first."""
    got = []
    for fam, f in report["search"].items():
        n = f["matched"].get(str(level))
        sd = f["seeds"].get(str(n)) if n is not None else None
        if sd and sd.get("success_mean") is not None:
            trial = next(t for t in f["trials"] if t["number"] == n)
            got.append({"family": fam, "site": trial["spec"], "success": sd["success_mean"],
                        "sd": sd.get("success_sd"), "kl": sd.get("kl_mean"), "trial": n})
    return sorted(got, key=lambda g: -g["success"])


def entry(report: dict, task: Task, level: float = LEVEL) -> dict:
    """One row of the map from a tuned comparison's report."""
    spec = task.map or {}
    got = ranked(report, level)
    none = next((a for a in report.get("arms", []) if a.get("name") == "none"), None)
    found = success(none["metrics"]) if none else None
    base = found[1] if found else None  # the unedited model's success: a behaviour it already shows half the time
    best, second = (got + [None, None])[:2]
    model = Path(report["model"]).name if report.get("model") else None
    said = verdict(spec.get("advice_arm"), got, base)
    if said.startswith(("nothing beats", "no family")):  # what a looser damage budget buys, if anything
        said += looser(report, level, base)
    return {"behaviour": spec.get("behaviour", task.name), "model": model,
            "advice": spec.get("advice"), "level": level, "best": best, "runner_up": second,
            "unedited": base, "verdict": said}


def looser(report: dict, level: float, base: float | None) -> str:
    """The verdict's tail ``; at KL ≤ L: family success (KL k)`` for the first looser matched level where a
    family beats the unedited model by more than :data:`TIE`, else "" (levels: ``search.KL_LEVELS``)."""
    for lvl in sorted({float(k) for f in report["search"].values() for k in f["matched"]}):
        if lvl <= level:
            continue
        top = ranked(report, lvl)
        if top and top[0]["success"] - (base or 0.0) > TIE:
            kl = f" (KL {top[0]['kl']:.3f})" if top[0].get("kl") is not None else ""
            return f"; at KL ≤ {lvl:g}: {top[0]['family']} {top[0]['success']:.2f}{kl}"
    return ""


def verdict(advice_arm: str | None, got: list[dict], base: float | None = None) -> str:
    if not got:
        return f"no family reached KL ≤ {LEVEL:g} on validation"
    if base is not None and got[0]["success"] - base <= TIE:
        return (f"nothing beats the unedited model ({base:.2f}; best {got[0]['family']} {got[0]['success']:.2f}): "
                "the advice is not tested")
    if not advice_arm:
        return "advice not judged (no advice_arm)"
    mine = next((g for g in got if g["family"] == advice_arm), None)
    if mine is None:
        return f"advice fails: {advice_arm} had no point under the KL level"
    gap = got[0]["success"] - mine["success"]
    if gap <= TIE:
        return f"advice holds ({advice_arm} {mine['success']:.2f} vs best {got[0]['success']:.2f})"
    return f"advice fails by {gap:.2f} ({advice_arm} {mine['success']:.2f}, {got[0]['family']} {got[0]['success']:.2f})"


def markdown(rows: list[dict]) -> str:
    head = ("| behaviour | model | common advice | best at KL ≤ {lvl:g} (site and method) | test success (gen) "
            "| runner-up | verdict |\n|---|---|---|---|---|---|---|")
    lines = [head.format(lvl=rows[0]["level"] if rows else LEVEL)]
    for r in rows:
        b, s = r["best"], r["runner_up"]
        succ = "–" if not b else f"{b['success']:.2f}" + (f" ± {b['sd']:.2f}" if b.get("sd") else "")
        site = "–" if not b else "`" + b["site"] + "`"
        runner = "–" if not s else f"{s['family']} {s['success']:.2f}"
        lines.append(f"| {r['behaviour']} | {r.get('model') or '–'} | {r['advice'] or '–'} | {site} | {succ} "
                     f"| {runner} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path) -> None:
    """Best and runner-up test success per behaviour, at the map's KL level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2 + 1.4 * max(len(rows), 1), 3.8))
    xs = range(len(rows))
    for off, key, label in ((-0.2, "best", "best"), (0.2, "runner_up", "runner-up")):
        vals = [(r[key] or {}).get("success") or 0.0 for r in rows]
        bars = ax.bar([x + off for x in xs], vals, 0.4, label=label)
        for bar, r in zip(bars, rows):
            if r[key]:
                ax.annotate(r[key]["family"], (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [r["behaviour"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(f"test success (generated), KL ≤ {rows[0]['level'] if rows else LEVEL:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_map(model, tasks: list, out_dir, *, budget: int, seeds: int = 1, overwrite: bool = False,
            progress: bool = True, jobs: int = 1) -> list[dict]:
    """The budgeted comparison for every task, then the map (``map.md``, ``map.json``, ``map.png``) in ``out_dir``.

    ``jobs``: each task's families tuned that many at a time (:func:`surgeon.study.tuned.compare_tuned`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in tasks:
        task = t if isinstance(t, Task) else Task.load(t)
        arms = (task.map or {}).get("arms") or DEFAULT_ARMS
        where = task_model(task, model)
        report = finished(out / task.name, where, budget, seeds)
        if report is None:
            report = compare_tuned(task, where, arms, out / task.name, budget=budget, seeds=seeds,
                                   overwrite=overwrite, progress=progress, jobs=jobs)
        elif progress:
            print(f"map: {task.name}: reading the finished report in {out / task.name}", file=sys.stderr)
        rows.append(entry(report, task))
    (out / "map.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    models = ", ".join(dict.fromkeys(r["model"] for r in rows if r.get("model")))
    (out / "map.md").write_text(f"# Map of intervention on {models}\n\n{markdown(rows)}", encoding="utf-8")
    plot(rows, out / "map.png")
    return rows


def task_model(task: Task, default) -> Path:
    """The model a task runs on: its map entry's ``model`` (a fixture name or a path), else ``default``."""
    name = (task.map or {}).get("model")
    if not name:
        if default is None:
            raise SurgeonError(f"task {task.name}: its map entry names no model and no --model was given")
        return Path(default).absolute()
    return Path(fixture(name)) if name in FIXTURES else Path(name).absolute()


def finished(folder: Path, model: Path, budget: int, seeds: int) -> dict | None:
    """A task's report already written for this model, budget and seeds, else None."""
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = (report.get("budget"), report.get("seeds"), report.get("model")) == (budget, seeds, str(model))
    return report if same and "search" in report else None
