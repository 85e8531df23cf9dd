"""Arms of a comparison: what each one is (specs), and how one is made (the child process).

An arm spec is one or more stages joined by `` + `` (edit then fine-tune):

* ``none`` — the original model (measured once, not copied);
* ``edit:PATH k=v ...`` — an edit script run like ``surgeon apply``; if the
  script's ``edit`` takes a ``task`` parameter it receives the task file's path;
* ``lora k=v ...`` / ``full k=v ...`` — a fine-tune
  (:class:`surgeon.study.finetune.FinetuneConfig` fields: ``layers=0-6``,
  ``roles=attn+mlp``, ``rank``, ``alpha``, ``steps``, ``lr``, ``seed``,
  ``batch``, ``max_length``, ``max_delta``). ``layers=auto`` asks
  :func:`surgeon.study.locate.suggest_layers` (``layers=auto:METHOD`` passes a
  method), through the :data:`LAYER_RESOLVERS` hook.

Each arm is made in its own child process (``python -m surgeon.study.arms JOB``,
the job a :class:`ArmJob` in JSON), so its wall time and peak resident memory
are its own, not the parent's accumulated state.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from surgeon._threads import thread_count
from surgeon.edits.apply import parse_params, run_script
from surgeon.errors import SurgeonError
from surgeon.io.changes import elements_changed
from surgeon.io.checkpoint import open_checkpoint
from surgeon.study.config import FinetuneConfig
from surgeon.study.cost import peak_rss_mb
from surgeon.study.finetune import finetune
from surgeon.study.locate import suggest_layers
from surgeon.study.task import Task
from surgeon.study.train import check

FINETUNE_KEYS = tuple(f.name for f in fields(FinetuneConfig) if f.name != "method")
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


@dataclass
class ArmJob:
    """What the parent hands one arm's child process (``NAME.job.json``); the child answers ``NAME.result.json``."""

    name: str
    spec: str
    model: str  # the original checkpoint
    task: str  # the task file
    out: str  # where the arm's checkpoint is saved
    stages: list[dict]  # Stage fields, scripts as absolute paths
    allow_external_links: bool = False  # open the original as compare(..., allow_external_links=) did

    @classmethod
    def of(cls, arm: Arm, model: Path, task_file: Path, out: Path, *, allow_external_links: bool = False) -> ArmJob:
        stages = [{"kind": s.kind, "script": str(Path(s.script).absolute()) if s.script else None,
                   "params": s.params} for s in arm.stages]
        return cls(arm.name, arm.spec, str(model), str(task_file), str(out), stages, allow_external_links)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> ArmJob:
        return cls(**json.loads(Path(path).read_text()))

    def result_file(self, job_file: Path) -> Path:
        return Path(job_file).with_name(f"{self.name}.result.json")


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


def check_finetunes(arms: list[Arm], ck, task: Task) -> None:
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


def takes_task(script: Path) -> bool:
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


def run_arm(job: ArmJob) -> dict:
    """Make one arm's checkpoint from the original (runs in the child process)."""
    torch.set_num_threads(thread_count())  # passive OpenMP waits: set by the parent (compare._child_env)
    t0 = time.perf_counter()
    ck = open_checkpoint(job.model, allow_external_links=job.allow_external_links)
    task = Task.load(job.task)
    sources, finetunes = [], []
    for st in job.stages:
        if st["kind"] == "edit":
            params = dict(st["params"])
            if "task" not in params and takes_task(Path(st["script"])):
                params["task"] = job.task
            sources.append(run_script(ck, st["script"], params))
        else:
            p = {k: v for k, v in st["params"].items() if k in FINETUNE_KEYS}
            r = finetune(ck, task, FinetuneConfig(method=st["kind"], **p), progress=False)
            d = r.to_dict()
            d.pop("losses")
            d["loss_first"], d["loss_last"] = r.losses[0], r.losses[-1]
            finetunes.append(d)
            sources.append({"kind": "finetune", **d["config"], "layers_from": st["params"].get("layers_from")})
    changed = elements_changed(ck)
    manifest = ck.save(job.out, overwrite=True,
                       source={"kind": "compare-arm", "arm": job.name, "spec": job.spec, "stages": sources})
    wall = time.perf_counter() - t0
    linked = set(manifest["files"]["linked"])
    written = sum(p.stat().st_size for p in Path(job.out).rglob("*")
                  if p.is_file() and p.relative_to(job.out).as_posix() not in linked)
    return {"wall_s": wall, "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
            "params_changed": changed, "tensors_changed": len(manifest["tensors"]), "bytes_written": written,
            "finetune": finetunes, "notes": [n for f in finetunes for n in f["notes"]]}


def _main(argv: list[str]) -> int:
    job_file = Path(argv[0])
    job = ArmJob.read(job_file)
    result = run_arm(job)
    job.result_file(job_file).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":  # the child process of one arm
    sys.exit(_main(sys.argv[1:]))
