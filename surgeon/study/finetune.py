"""A short calibration fine-tune on a task, written like an edit: the baseline every edit must beat.

``finetune(ck, task, FinetuneConfig(method="lora", layers="0-6", roles="attn,mlp"))``
trains the chosen layers × roles on the task's training examples and stages
the changed tensors into the Checkpoint, so the result goes through the same
:func:`surgeon.io.save.save` (and manifest) as a hand edit.

* **Which tensors** come from the role vocabulary, never from module lists:
  ``attn`` is every attention projection of the family's role table
  (``attn.q/k/v/o`` or a fused ``attn.qkv``), ``mlp`` every MLP projection
  (``mlp.gate/up/down``, ``mlp.gate_up``; routers and MoE experts are left
  out), ``norm`` every ``norm.*``; single roles (``mlp.down``,
  ``norm.pre_mlp``, ``attn.q_norm``) and the top-level ``embed``,
  ``lm_head`` and ``final_norm`` work too.
* **LoRA** (Hu et al. 2021) through peft: the chosen modules are passed to
  peft as exact module names taken from the role table (one adapter can then
  cover layer projections and ``lm_head`` together, which
  ``target_modules`` + ``layers_to_transform`` cannot); after training each
  adapter's B·A·scale (peft's ``get_delta_weight``) is added to its tensor
  (:func:`stage_deltas`). Norms are vectors with nothing to factor: under
  LoRA they are trained in full.
* **The merge** holds one tensor at a time: every trained tensor's delta
  goes to its own file in a temporary folder (one process, or rank 0 of
  ``nproc`` > 1), the model is dropped, and each tensor is staged as
  base + delta deferred (:meth:`surgeon.io.checkpoint.Checkpoint.defer`),
  made again from the files by whatever reads it (the save: one at a time).
  The folder lives as long as the staged values that read it.
* **full**: the chosen tensors are unfrozen, everything else frozen.
  ``max_delta`` bounds every weight to ± that much around its start after
  each step: the L∞-constrained fine-tune FT-L (Zhu et al. 2020, "Modifying
  Memories in Transformer Models"), ROME's fine-tuning baseline.
* **Tied embeddings** (SmolLM2, Gemma-3): ``lm_head`` *is* ``embed``. A full
  fine-tune of either trains the one shared matrix through both its input
  and output use. A LoRA adapter on ``lm_head`` is trained on the output side
  only, but merging it changes the shared matrix, so the saved model's input
  embeddings move too (peft warns about exactly this); the result notes it.
* **Loss** on the completion tokens only for prompt → completion examples,
  on every token for raw texts. Logits are computed only at the positions
  the loss needs (``logits_to_keep`` with a mask): for Gemma-3's
  262k-vocabulary head the full logits tensor is most of the step's cost.

The update is trained in float32 and cast to the checkpoint's dtype on save;
a LoRA update much smaller than a bf16 weight's rounding step partly
vanishes there, so the result reports how much survived the cast
(``update_kept`` = 1 − relative error of the saved update).
"""

from __future__ import annotations

import math
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open

from surgeon.io.atomic import check_output
from surgeon.io.changes import count_changed
from surgeon.io.checkpoint import Checkpoint, open_checkpoint
from surgeon.runtime import load
from surgeon.study import finetune_dist, train
from surgeon.study.config import FinetuneConfig
from surgeon.study.cost import peak_rss_mb
from surgeon.study.task import Task


@dataclass
class FinetuneResult:
    config: dict
    targets: list[str]  # role keys trained
    trainable_params: int
    params_changed: int  # elements of the saved tensors that differ from the input
    steps: int
    tokens: int  # non-padding tokens seen in training
    train_s: float  # the training loop
    wall_s: float  # load + train + merge + stage (+ save)
    tokens_per_s: float
    peak_rss_mb: float
    losses: list[float]
    # 1 − ‖saved − trained update‖ / ‖trained update‖: 1 = the cast to the stored dtype lost nothing, ≤ 0 = all
    update_kept: float
    notes: list[str] = field(default_factory=list)
    manifest: dict | None = None
    ck: object = None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("ck", "manifest")}


# ----------------------------------------------------------------- training


def finetune(ck_or_path, task: Task | str | Path, config: FinetuneConfig | None = None, *, out=None,
             overwrite: bool = False, copy: bool = False, progress: bool = True,
             source: dict | None = None) -> FinetuneResult:
    """Train ``config``'s layers × roles on ``task`` and stage the result into the checkpoint.

    With ``out`` the checkpoint is saved there (manifest included). The
    checkpoint object is returned in ``result.ck`` either way, so an edit can
    be staged before and the fine-tune starts from it.
    """
    t0 = time.perf_counter()
    ck = ck_or_path if isinstance(ck_or_path, Checkpoint) else open_checkpoint(ck_or_path)
    task = task if isinstance(task, Task) else Task.load(task)
    cfg = (config or FinetuneConfig()).resolved(ck.num_layers)
    keys = train.target_keys(ck, cfg.layers, cfg.roles)
    if out is not None:
        check_output(out, (ck.path,), overwrite=overwrite)  # fail before training, not after
    notes: list[str] = []

    if cfg.nproc > 1:
        run = finetune_dist.launch(ck, task, cfg, keys, progress=progress)
        n_trainable, losses, tokens, train_s = run.n_trainable, run.losses, run.tokens, run.train_s
        files, folder, peak = run.files, run.folder, run.peak_mb  # the largest rank's peak
        notes.extend(run.notes)
    else:
        n_trainable, losses, tokens, train_s, files, folder = _train_here(ck, task, cfg, keys, notes, progress)
        peak = 0.0
    changed, update_kept = stage_deltas(ck, files, notes, folder=folder)
    peak = max(peak, peak_rss_mb())  # this process's training, or its staging

    cfg_doc = asdict(cfg)
    ck.record("finetune", **cfg_doc, targets=keys, task=task.name)
    result = FinetuneResult(
        config=cfg_doc, targets=keys, trainable_params=n_trainable, params_changed=changed, steps=cfg.steps,
        tokens=tokens, train_s=train_s, wall_s=time.perf_counter() - t0,
        tokens_per_s=tokens / train_s if train_s > 0 else 0.0, peak_rss_mb=peak, losses=losses,
        update_kept=update_kept, notes=notes, ck=ck)
    if out is not None:
        src = source or {"kind": "finetune", "task": task.name,
                         "task_path": str(task.path.absolute()) if task.path else None}
        result.manifest = ck.save(out, copy=copy, overwrite=overwrite, source={**src, "finetune": result.to_dict()})
        result.wall_s = time.perf_counter() - t0
    return result


def _train_here(ck, task: Task, cfg: FinetuneConfig, keys: list[str], notes: list[str], progress: bool):
    """Train in this process; the deltas go to files in a temporary folder and the model is dropped.
    Returns (trainable parameters, losses, tokens, seconds, delta files, their folder)."""
    torch.manual_seed(cfg.seed)
    rt = load(ck, from_env=False)
    rows = train.encode(rt.tokenizer, task, cfg.max_length, notes)
    job = train.prepare(rt, ck, cfg, keys, notes)
    losses, tokens, train_s = train.train(rt, job, rows, cfg, progress)
    folder = tempfile.TemporaryDirectory(prefix="surgeon-finetune-")
    try:
        files = train.write_deltas(train.deltas(job, keys, ck), Path(folder.name))
    except BaseException:
        folder.cleanup()
        raise
    return job.n_trainable, losses, tokens, train_s, files, folder


class _Lease:
    """Keeps a temporary folder while a staged value reads from it; the folder goes with the last one (or at exit)."""

    def __init__(self, folder: tempfile.TemporaryDirectory):
        weakref.finalize(self, folder.cleanup)


def _plus_delta(file: Path, pkey: str, _lease, current: torch.Tensor) -> torch.Tensor:
    """``current`` + the delta of ``pkey`` read from ``file`` (a deferred value's update; ``_lease`` is held)."""
    with safe_open(file, "pt") as fh:
        return current + fh.get_tensor(pkey)


def stage_deltas(ck, files: list[Path], notes: list[str], *, folder=None) -> tuple[int, float]:
    """Stage base + delta for every delta in ``files``, one tensor at a time; returns (elements changed, update kept).

    ``files``: one safetensors file per trained tensor's float32 delta, keyed
    by role (:func:`surgeon.study.train.write_deltas`). Each sum is made here
    once for the figures, dropped, and staged deferred
    (:meth:`surgeon.io.checkpoint.Checkpoint.defer`): whatever reads it later,
    the save included, makes it again from the files, so the merge never
    holds more than a tensor or two. ``folder`` (the ``TemporaryDirectory``
    holding the files) is removed once no staged value reads from it (``ck.reset()``,
    a new value, ``ck`` itself gone). Deltas of one stored tensor add up (two
    LoRA adapters on a tied ``embed`` / ``lm_head`` land in the one matrix).
    """
    lease = _Lease(folder) if folder is not None else None
    groups: dict[str, list[tuple[str, Path]]] = {}  # stored tensor -> its (key, file) deltas, in order
    for f in files:
        with safe_open(f, "pt") as fh:
            for pkey in fh.keys():
                groups.setdefault(ck.resolve(pkey).tensor, []).append((pkey, f))
    trained_sq, lost_sq, changed = 0.0, 0.0, 0
    for name, items in groups.items():
        old = now = ck.stored(name)
        for pkey, f in items:
            with safe_open(f, "pt") as fh:
                delta = fh.get_tensor(pkey)
            view = ck.resolve(pkey).view
            new = view.read(now).float() + delta
            ck.defer(pkey, partial(_plus_delta, f, pkey, lease))
            now = ck.stored(name)  # made once: for what the cast kept, the next delta's base and the count
            trained_sq += float(delta.pow(2).sum())
            lost_sq += float((view.read(now).float() - new).pow(2).sum())
        changed += count_changed(old, now)
    update_kept = 1.0 - math.sqrt(lost_sq / trained_sq) if trained_sq > 0 else 0.0
    if trained_sq > 0 and update_kept < 0.5:
        notes.append(f"only {update_kept:.0%} of the update's norm survives the cast to the stored dtype; "
                     "raise lr or steps, or the change is below the weights' rounding step")
    return changed, update_kept
