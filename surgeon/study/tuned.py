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
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from surgeon.io.checkpoint import open_checkpoint
from surgeon.runtime import load
from surgeon.study import measure
from surgeon.study.arms import Arm, CompareError, Stage, parse_arm
from surgeon.study.compare import make_and_measure, measure_original, prepare_arms, say_stderr, task_counts
from surgeon.study.report import markdown, plot, reading
from surgeon.study.search import KL_LEVELS, Search, front, matched, search, success, with_params
from surgeon.study.task import Task, TaskError


def compare_tuned(task: Task | str | Path, model, arms: list[str | Arm], out_dir, *, budget: int, seeds: int = 3,
                  overwrite: bool = False, progress: bool = True, timeout_s: float | None = None,
                  seed: int = 0) -> dict:
    """Tune every arm family with ``budget`` trials on validation, report the chosen points on test."""
    task = task if isinstance(task, Task) else Task.load(task)
    if budget < 1 or seeds < 1:
        raise CompareError(f"budget ({budget}) and seeds ({seeds}) must be at least 1")
    try:
        val = task.split("validation")
    except TaskError as e:
        raise CompareError(f"compare --budget tunes on the validation split and never on test: {e}") from None
    test = task.split("test")
    model, out = Path(model).absolute(), Path(out_dir).absolute()
    arms = prepare_arms(val, model, [a if isinstance(a, Arm) else parse_arm(a) for a in arms], out, overwrite)
    say = say_stderr if progress else (lambda msg: None)
    work = out / "arms"
    work.mkdir(parents=True, exist_ok=True)
    files = {name: out / f"task.{name}.json" for name in ("validation", "test")}
    for name, t in (("validation", val), ("test", test)):
        files[name].write_text(json.dumps(t.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    num_layers = open_checkpoint(model).num_layers
    say(f"compare: measuring the original {model.name} on the validation split of {task.name}")
    ref_val = measure.reference(load(model), val)
    searches = {}
    for a in arms:
        if [s.kind for s in a.stages] == ["none"]:
            continue
        say(f"compare: tuning {a.name} ({a.spec}) with {budget} trial(s) on validation")
        searches[a.name] = search(a, budget, _evaluator(model, val, files["validation"], ref_val, work, timeout_s, say),
                                  num_layers=num_layers, seed=seed, say=say)

    say(f"compare: measuring the original and the chosen points on the test split of {task.name}")
    ref_test, original, ref_s = measure_original(model, test)
    rows = [{"name": "none", "spec": "none", "stages": [], "error": None, "metrics": original.to_dict(details=False),
             "details": original.details, "cost": _no_cost()}]
    families = {}
    for a in arms:
        if a.name in searches:
            fam, fam_rows = _report_family(a, searches[a.name], seeds, model, test, files["test"], ref_test, work,
                                           timeout_s, say)
            families[a.name] = fam
            rows += fam_rows
    report = {
        "task": task.name, "task_path": str(task.path) if task.path else None, "model": str(model),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": int(os.environ.get("SURGEON_THREADS", os.cpu_count() or 1)),
        "reference_s": ref_s, "counts": task_counts(test), "validation_counts": task_counts(val), "arms": rows,
        "budget": budget, "seeds": seeds, "kl_levels": list(KL_LEVELS), "search": families,
    }
    report["reading"] = reading(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "report.png")
    return report


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
