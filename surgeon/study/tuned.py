"""``surgeon compare --budget N``: every arm family tuned with the same budget on validation, reported on test.

1. *Search* (validation only): each arm that is not ``none`` is a family;
   :func:`surgeon.study.search.search` runs ``budget`` trials of its knobs.
   Each trial's child process reads ``OUT/task.validation.json`` — the
   training examples and the validation probes, no test probe — and the
   parent measures it against the original on the validation split.
2. *Choose* (validation only): the family's validation Pareto front
   (success up, KL down) and, per KL level of :data:`~surgeon.study.search.KL_LEVELS`,
   the trial with the best validation success at or under that KL.
3. *Report* (test): the chosen trials are made again and measured on the
   test split; those chosen for a KL level are also re-run with
   ``seeds - 1`` more seeds (fine-tunes only: edits are deterministic) and
   reported as mean ± sd.

The report (``report.json/md/png``) keeps the table of :mod:`surgeon.study.compare`
(one row per chosen point), adds the matched-damage table, the fronts and
each family's tuning wall time and peak memory.

Families are independent (each its own Optuna study, seeded alike), so ``jobs``
tunes that many side by side, each in a worker process with ``threads // jobs``
torch threads (its arms' children inherit the count). One torch process barely
gains from a second core here (LoRA trials took 34 min on two threads and on one), while two
one-thread processes take one core each. A worker measures the original once per
split for all the families it gets; the trials and their numbers are those of
``jobs=1`` (``tests/test_search.py``).
"""

from __future__ import annotations

import datetime as _dt
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from surgeon import _threads
from surgeon.io.checkpoint import open_checkpoint
from surgeon.runtime import load
from surgeon.study import measure
from surgeon.study.arms import Arm, CompareError, Stage, parse_arm
from surgeon.study.compare import make_and_measure, prepare_arms, say_stderr, task_counts
from surgeon.study.report import markdown, plot, reading
from surgeon.study.search import KL_LEVELS, Search, front, matched, search, success, with_params
from surgeon.study.task import Task, TaskError


def compare_tuned(task: Task | str | Path, model, arms: list[str | Arm], out_dir, *, budget: int, seeds: int = 3,
                  overwrite: bool = False, progress: bool = True, timeout_s: float | None = None,
                  seed: int = 0, jobs: int = 1) -> dict:
    """Tune every arm family with ``budget`` trials on validation, report the chosen points on test.

    ``jobs``: families tuned side by side, each in its own worker process (see the module's note).
    """
    task = task if isinstance(task, Task) else Task.load(task)
    if budget < 1 or seeds < 1 or jobs < 1:
        raise CompareError(f"budget ({budget}), seeds ({seeds}) and jobs ({jobs}) must be at least 1")
    try:
        val = task.split("validation")
    except TaskError as e:
        raise CompareError(f"compare --budget tunes on the validation split and never on test: {e}") from None
    test = task.split("test")
    model, out = Path(model).absolute(), Path(out_dir).absolute()
    arms = prepare_arms(val, model, [a if isinstance(a, Arm) else parse_arm(a) for a in arms], out, overwrite)
    work = out / "arms"
    work.mkdir(parents=True, exist_ok=True)
    files = {name: out / f"task.{name}.json" for name in ("validation", "test")}
    for name, t in (("validation", val), ("test", test)):
        files[name].write_text(json.dumps(t.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    plan = _Plan(model, val, test, files["validation"], files["test"], work, budget, seeds, seed, timeout_s,
                 open_checkpoint(model).num_layers, progress)
    tuned = [a for a in arms if [s.kind for s in a.stages] != ["none"]]
    threads = _threads.thread_count()
    t0 = time.perf_counter()
    if jobs == 1 or len(tuned) < 2:
        try:
            families = dict(_tune(plan, a) for a in tuned)
            original, ref_s = _original(plan)
        finally:
            _REFS.clear()  # the neutral text's distributions: large on a 262k vocabulary
    else:
        per_job = max(1, threads // jobs)
        plan.say(f"compare: tuning {len(tuned)} families {jobs} at a time, {per_job} thread(s) each")
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: torch's threads set before it loads
        with ProcessPoolExecutor(min(jobs, len(tuned)), mp_context=ctx, initializer=_threads.for_job,
                                 initargs=(per_job,)) as pool:
            running = [pool.submit(_tune, plan, a) for a in tuned]
            first = pool.submit(_original, plan)
            families = dict(f.result() for f in running)
            original, ref_s = first.result()
    rows = [{"name": "none", "spec": "none", "stages": [], "error": None, **original, "cost": _no_cost()}]
    rows += [r for a in tuned for r in families[a.name].pop("rows")]
    report = {
        "task": task.name, "task_path": str(task.path) if task.path else None, "model": str(model),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": threads, "jobs": jobs, "wall_s": time.perf_counter() - t0,
        "reference_s": ref_s, "counts": task_counts(test), "validation_counts": task_counts(val), "arms": rows,
        "budget": budget, "seeds": seeds, "kl_levels": list(KL_LEVELS), "search": families,
    }
    report["reading"] = reading(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "report.png")
    return report


@dataclass(frozen=True)
class _Plan:
    """What every family's tuning shares; plain data, so that a worker process gets it as it is."""

    model: Path
    val: Task
    test: Task
    val_file: Path
    test_file: Path
    work: Path
    budget: int
    seeds: int
    seed: int
    timeout_s: float | None
    num_layers: int
    progress: bool

    def say(self, msg: str) -> None:
        if self.progress:
            say_stderr(msg)


_REFS: dict = {}  # (model, task file) -> the original's reference outputs, once per process and comparison


def _ref(plan: _Plan, split: str):
    key = (plan.model, plan.val_file if split == "validation" else plan.test_file)
    if key not in _REFS:
        plan.say(f"compare: measuring the original {plan.model.name} on the {split} split")
        _REFS[key] = measure.reference(load(plan.model), plan.val if split == "validation" else plan.test)
    return _REFS[key]


def _tune(plan: _Plan, a: Arm) -> tuple[str, dict]:
    """One family: its search on validation, then its chosen points on test (``fam["rows"]``: their rows)."""
    plan.say(f"compare: tuning {a.name} ({a.spec}) with {plan.budget} trial(s) on validation")
    evaluate = _evaluator(plan.model, plan.val, plan.val_file, _ref(plan, "validation"), plan.work, plan.timeout_s,
                          plan.say)
    s = search(a, plan.budget, evaluate, num_layers=plan.num_layers, seed=plan.seed, say=plan.say)
    fam, rows = _report_family(a, s, plan.seeds, plan.model, plan.test, plan.test_file, _ref(plan, "test"),
                               plan.work, plan.timeout_s, plan.say)
    fam["rows"] = rows
    return a.name, fam


def _original(plan: _Plan) -> tuple[dict, float]:
    """The unedited model's row fields on test, and the seconds its reference and measurement took."""
    t0 = time.perf_counter()
    original = measure.measure(load(plan.model), plan.test, _ref(plan, "test"))
    return {"metrics": original.to_dict(details=False), "details": original.details}, time.perf_counter() - t0


def _no_cost() -> dict:
    return {"wall_s": 0.0, "peak_rss_mb": None, "params_changed": 0, "tensors_changed": 0, "bytes_written": 0,
            "finetune": [], "notes": []}


def _evaluator(model, val: Task, val_file: Path, ref_val, work: Path, timeout_s, say):
    """``evaluate(arm) -> (validation metrics, cost)`` for the search; raises CompareError when a trial fails."""
    def evaluate(arm: Arm):
        row = {"name": arm.name}
        make_and_measure(arm, row, model, val, val_file, ref_val, work, timeout_s, False, say)
        if row.get("error"):
            raise CompareError(row["error"])
        return row["metrics"], row["cost"]

    return evaluate


def _test_row(arm: Arm, model, test: Task, test_file: Path, ref_test, work: Path, timeout_s, say) -> dict:
    row = {"name": arm.name, "spec": arm.spec, "stages": [asdict(s) for s in arm.stages], "error": None}
    make_and_measure(arm, row, model, test, test_file, ref_test, work, timeout_s, False, say)
    return row


def _report_family(arm: Arm, s: Search, seeds: int, model, test: Task, test_file: Path, ref_test, work: Path,
                   timeout_s, say) -> tuple[dict, list[dict]]:
    """The family's chosen points (validation front ∪ matched picks) measured on test; seeds for the picks."""
    picks = matched(s.trials)
    chosen = {t.number: t for t in front(s.trials) + [t for t in picks.values() if t]}
    fam = s.to_dict()
    fam["test"], fam["seeds"], rows = {}, {}, []
    t0 = time.perf_counter()
    for n, t in sorted(chosen.items()):
        a = with_params(arm, s.knobs, t.params, f"{arm.name}.t{n}.test")  # its own files beside the trial's
        say(f"compare: {arm.name} trial {n} (chosen on validation) on test: {a.spec}")
        row = _test_row(a, model, test, test_file, ref_test, work, timeout_s, say)
        row.update(name=f"{arm.name}.t{n}", family=arm.name, trial=n,
                   chosen_for=[lvl for lvl, p in picks.items() if p is t],
                   validation={"success": t.success, "kl": t.kl})
        fam["test"][str(n)] = _point(row)
        if row["chosen_for"]:
            fam["seeds"][str(n)] = _seeds(a, row, seeds, model, test, test_file, ref_test, work, timeout_s, say)
            rows.append(row)
    fam["test_wall_s"] = time.perf_counter() - t0
    return fam, rows


def _point(row: dict) -> dict:
    if row.get("error"):
        return {"error": row["error"]}
    got = success(row["metrics"])
    return {"success": got[1] if got else None, "success_key": got[0] if got else None,
            "kl": row["metrics"].get("kl"), "metrics": row["metrics"]}


def _seeds(a: Arm, row: dict, seeds: int, model, test: Task, test_file: Path, ref_test, work: Path, timeout_s,
           say) -> dict:
    """Test success and KL of the point over ``seeds`` seeds (the chosen run is seed 0 of the list)."""
    first = _point(row)
    runs = [first] if "error" not in first else []
    tuned = [i for i, st in enumerate(a.stages) if st.kind in ("lora", "full")]
    if tuned:
        for k in range(1, seeds):
            stages = [Stage(st.kind, st.script, {**st.params, **({"seed": k} if i in tuned else {})})
                      for i, st in enumerate(a.stages)]
            say(f"compare: {a.name} on test with seed {k}")
            p = _point(_test_row(Arm(f"{a.name}.s{k}", a.spec, stages), model, test, test_file, ref_test, work,
                                 timeout_s, say))
            if "error" not in p:
                runs.append(p)
    out = {"n": len(runs), "deterministic": not tuned}
    for key in ("success", "kl"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        out[key] = vals
        out[f"{key}_mean"] = statistics.fmean(vals) if vals else None
        out[f"{key}_sd"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals and not tuned else None)
    return out
