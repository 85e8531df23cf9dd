"""Arms side by side on one task: the engine behind ``surgeon compare``.

``compare(task, model, ["rome=edit:rome_arm.py layer=6", "lora_early=lora layers=0-6", "none"], out)``
makes each *arm* from the same original checkpoint (:mod:`surgeon.study.arms`:
specs, and the child process that makes one), measures it with
:mod:`surgeon.study.measure` against the original (whose outputs are computed
once), and writes ``report.json``, ``report.md`` and ``report.png``
(:mod:`surgeon.study.report`).

While an arm's child runs, its log (``OUT/arms/NAME.log``) is followed: every
line it writes and, when it is quiet, a heartbeat with the elapsed time go to
the terminal.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from surgeon._threads import quiet_waits
from surgeon.errors import SurgeonError
from surgeon.io.atomic import check_outside
from surgeon.io.checkpoint import Checkpoint, open_checkpoint
from surgeon.runtime import load
from surgeon.study import measure
from surgeon.study.arms import Arm, ArmJob, CompareError, check_finetunes, expand_arm, parse_arm
from surgeon.study.report import markdown, plot, reading
from surgeon.study.task import Task

HEARTBEAT_S = 30.0  # a quiet child is reported this often


def compare(task: Task | str | Path, model, arms: list[str | Arm], out_dir, *, keep_checkpoints: bool = False,
            overwrite: bool = False, progress: bool = True, timeout_s: float | None = None,
            allow_external_links: bool = False) -> dict:
    """Run every arm from ``model``, measure each against the original, write the report; returns it.

    ``allow_external_links``: as for :func:`surgeon.io.checkpoint.open_checkpoint`, here and in each arm's child.
    """
    task = task if isinstance(task, Task) else Task.load(task)
    arms = [a if isinstance(a, Arm) else parse_arm(a) for a in arms]
    model = Path(model).absolute()
    out = Path(out_dir).absolute()
    ck0 = open_checkpoint(model, allow_external_links=allow_external_links)  # fail early on a bad input
    arms = prepare_arms(task, ck0, arms, out, overwrite)
    say = say_stderr if progress else (lambda msg: None)
    work = out / "arms"
    work.mkdir(parents=True, exist_ok=True)
    task_file = out / "task.json"
    task_file.write_text(json.dumps(task.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    say(f"compare: measuring the original {model.name} on task {task.name}")
    ref, original, ref_s = measure_original(ck0, task)

    rows = []
    for i, a in enumerate(arms, 1):
        row = {"name": a.name, "spec": a.spec, "stages": [asdict(s) for s in a.stages], "error": None}
        if [s.kind for s in a.stages] == ["none"]:
            row.update(metrics=original.to_dict(details=False), details=original.details,
                       cost={"wall_s": 0.0, "peak_rss_mb": None, "params_changed": 0, "tensors_changed": 0,
                             "bytes_written": 0, "finetune": [], "notes": []})
        else:
            say(f"compare: arm {i}/{len(arms)} {a.name}: {a.spec}")
            make_and_measure(a, row, ck0, task, task_file, ref, work, timeout_s, keep_checkpoints, say)
        rows.append(row)

    report = {
        "task": task.name, "task_path": str(task.path) if task.path else None, "model": str(model),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": int(os.environ.get("SURGEON_THREADS", os.cpu_count() or 1)),
        "reference_s": ref_s, "counts": task_counts(task), "arms": rows,
    }
    report["reading"] = reading(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "report.png")
    return report


def _opened(model) -> Checkpoint:
    """The original as an open Checkpoint (a path is opened as it is, without external links)."""
    return model if isinstance(model, Checkpoint) else open_checkpoint(Path(model).absolute())


def measure_original(model, task: Task):
    """The original model's reference outputs and metrics on ``task``: (reference, metrics, seconds)."""
    t0 = time.perf_counter()
    rt0 = load(model)
    ref = measure.reference(rt0, task)
    original = measure.measure(rt0, task, ref)
    return ref, original, time.perf_counter() - t0


def prepare_arms(task: Task, model, arms: list[Arm], out: Path, overwrite: bool) -> list[Arm]:
    """Every check that can fail, before any arm spends minutes: names, input, output, task, scripts, configs."""
    ck0 = _opened(model)
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise CompareError(f"arm names must be unique: {', '.join(names)}")
    check_outside(ck0.path, out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CompareError(f"{out}: already exists and is not empty (pass overwrite=True / --overwrite)")
    if not (task.efficacy or task.generalisation or task.specificity or task.neutral or task.spelling):
        raise CompareError(f"task {task.name}: nothing to measure (no efficacy, generalisation or specificity "
                           f"probes, neutral text or spelling section)")
    for a in arms:
        for st in a.stages:
            if st.kind == "edit" and not Path(st.script).is_file():
                raise CompareError(f"arm {a.name}: edit script {st.script} not found")
    arms = [expand_arm(a, task=task, model=ck0) for a in arms]
    check_finetunes(arms, ck0, task)  # every arm's layers × roles and numbers, before any arm runs
    return arms


def make_and_measure(a: Arm, row: dict, model, task: Task, task_file: Path, ref, work: Path,
                      timeout_s, keep_checkpoints: bool, say) -> None:
    """One arm: its child makes the checkpoint, this process measures it; the outcome goes into ``row``."""
    ckpt = work / a.name
    ck0 = _opened(model)
    job = ArmJob.of(a, ck0.path, task_file, ckpt, allow_external_links=ck0.allow_external_links)
    job_file = job.write(work / f"{a.name}.job.json")
    t = time.perf_counter()
    try:
        cost = _run_child(job, job_file, work / f"{a.name}.log", timeout_s, say)
        cost["process_s"] = time.perf_counter() - t
        say(f"compare: arm {a.name}: made in {cost['process_s']:.0f} s; measuring")
        m = measure.measure(ckpt, task, ref)
        row.update(metrics=m.to_dict(details=False), details=m.details, cost=cost)
    except (CompareError, subprocess.TimeoutExpired, SurgeonError) as e:
        msg = f"timed out after {timeout_s} s" if isinstance(e, subprocess.TimeoutExpired) else str(e)
        row["error"] = msg
        say(f"compare: arm {a.name} failed: {msg}")
    finally:
        if not keep_checkpoints and ckpt.exists():
            shutil.rmtree(ckpt, ignore_errors=True)


def _run_child(job: ArmJob, job_file: Path, log: Path, timeout_s, say) -> dict:
    """Run the arm's child process, following its log on the terminal; returns its cost record."""
    t0 = time.perf_counter()
    with open(log, "w") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "surgeon.study.arms", str(job_file)], stdout=lf,
                                stderr=subprocess.STDOUT, env=_child_env())
        seen, last_said = 0, t0
        while True:
            try:
                proc.wait(timeout=2.0)
                break
            except subprocess.TimeoutExpired:
                now = time.perf_counter()
                if timeout_s is not None and now - t0 > timeout_s:
                    proc.kill()
                    proc.wait()
                    raise
                seen, new = _new_lines(log, seen)
                for line in new:
                    say(f"  {job.name} | {line}")
                if new:
                    last_said = now
                elif now - last_said >= HEARTBEAT_S:
                    say(f"  {job.name} | still running, {now - t0:.0f} s (log: {log})")
                    last_said = now
    for line in _new_lines(log, seen)[1]:
        say(f"  {job.name} | {line}")
    result_file = job.result_file(job_file)
    if proc.returncode != 0 or not result_file.is_file():
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise CompareError(tail[-1] if tail else f"child exited {proc.returncode}")
    return json.loads(result_file.read_text())


def _new_lines(log: Path, seen: int) -> tuple[int, list[str]]:
    """Complete lines written to ``log`` after byte ``seen`` (progress bars' carriage returns: the last state)."""
    data = log.read_bytes()
    end = data.rfind(b"\n") + 1
    if end <= seen:
        return seen, []
    chunk = data[seen:end].decode(errors="replace")
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in chunk.split("\n")]
    return end, [ln for ln in lines if ln]


def say_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _child_env() -> dict:
    env = quiet_waits(dict(os.environ))  # the child imports torch first thing: its OpenMP waits must sleep
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def task_counts(task: Task) -> dict:
    return {"train": len(task.train), "efficacy": len(task.efficacy), "generalisation": len(task.generalisation),
            "specificity": len(task.specificity), "neutral": len(task.neutral),
            "spelling": len((task.spelling or {}).get("prompts", []))}
