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
  ``target_modules`` + ``layers_to_transform`` cannot), merged with
  ``merge_and_unload`` after training. Norms are vectors with nothing to
  factor: under LoRA they are trained in full.
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
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm

from surgeon.io.atomic import check_output
from surgeon.io.changes import count_changed
from surgeon.io.checkpoint import Checkpoint, open_checkpoint
from surgeon.runtime import load
from surgeon.study.config import FinetuneConfig, FinetuneError
from surgeon.study.cost import peak_rss_mb
from surgeon.study.task import Task

GROUPS = ("attn", "mlp", "norm")
TOP = ("embed", "lm_head", "final_norm")


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


# ----------------------------------------------------------------- what to train


def check(ck, config: FinetuneConfig) -> list[str]:
    """Validate ``config`` against ``ck`` without training; returns the role keys it would train.
    (compare calls this for every arm before it spends minutes on the first one.)"""
    cfg = config.resolved(ck.num_layers)
    return target_keys(ck, cfg.layers, cfg.roles)


def target_keys(ck, layers: list[int], roles: list[str]) -> list[str]:
    """Role keys of the modules to train: chosen layers × roles (groups expanded) plus top-level roles."""
    arch = ck.architecture
    if arch is None:
        raise FinetuneError(f"{ck.path}: unknown architecture; fine-tuning needs a role table")
    modules = list(arch.roles) + list(arch.fused)  # layer roles that are whole modules
    keys: list[str] = []
    for r in roles:
        if r in TOP:
            if r not in ck:
                raise FinetuneError(f"role {r!r}: this {arch.name} checkpoint has no such tensor")
            keys.append(r)
            continue
        if r == "attn":
            chosen = [m for m in modules if m.startswith("attn.") and not m.endswith("_norm")]
        elif r == "mlp":
            chosen = [m for m in modules if m.startswith("mlp.") and not m.endswith("router")]
        elif r == "norm":
            chosen = [m for m in modules if m.startswith("norm.")]
        elif r in arch.roles or r in arch.fused:
            chosen = [r]
        else:
            fused = next((f for f, s in arch.fused.items() if r in s.get("parts", {})), None)
            if fused:
                raise FinetuneError(f"role {r!r} is part of the fused {fused} in {arch.name}; train {fused} instead")
            known = ", ".join(list(GROUPS) + list(TOP) + modules)
            raise FinetuneError(f"role {r!r}: not a role of {arch.name} (known: {known})")
        # a fused module and its separate parts never both exist in one family's table
        for layer in layers:
            for role in chosen:
                k = f"layers.{layer}.{role}"
                if k in ck:
                    keys.append(k)
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise FinetuneError(f"roles {','.join(roles)} on layers {layers}: nothing to train in this checkpoint")
    return keys


# ----------------------------------------------------------------- data


def _encode(tok, task: Task, max_length: int, notes: list[str] | None = None) -> list[tuple[list[int], int]]:
    """(token ids, index of the first label token) per training example; a note when any was cut."""
    if not task.train:
        raise FinetuneError(f"task {task.name}: no training examples")
    rows, cut_n = [], 0
    for e in task.train:
        if e.prompt:
            p = tok(e.prompt)["input_ids"]
            c = tok(e.completion, add_special_tokens=False)["input_ids"]
            if not c:
                raise FinetuneError(f"task {task.name}: completion of {e.prompt!r} encodes to no tokens")
            ids, start = p + c, len(p)
            if len(ids) > max_length:  # keep the completion, drop the prompt's beginning
                cut = min(len(ids) - max_length, len(p) - 1)
                ids, start = ids[cut:], start - cut
                cut_n += 1
        else:
            ids, start = tok(e.completion)["input_ids"], 1
            if len(ids) > max_length:
                ids, cut_n = ids[:max_length], cut_n + 1
        if len(ids) < 2:
            raise FinetuneError(f"task {task.name}: example {e.text[:40]!r} is shorter than two tokens")
        rows.append((ids, max(start, 1)))
    if cut_n and notes is not None:
        notes.append(f"{cut_n} of {len(rows)} training examples were longer than max_length {max_length} "
                     f"and were cut (prompts lose their beginning, texts their end)")
    return rows


def _batches(rows, batch: int, steps: int, seed: int, pad: int):
    """Seeded order over the examples, cycling; right-padded tensors per step."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    b = min(batch, len(rows))
    for _ in range(steps):
        while len(order) < b:
            order.extend(torch.randperm(len(rows), generator=g).tolist())
        pick, order = order[:b], order[b:]
        L = max(len(rows[i][0]) for i in pick)
        ids = torch.full((b, L), pad, dtype=torch.long)
        attn = torch.zeros((b, L), dtype=torch.long)
        label = torch.zeros((b, L), dtype=torch.bool)
        for j, i in enumerate(pick):
            x, start = rows[i]
            ids[j, : len(x)] = torch.tensor(x)
            attn[j, : len(x)] = 1
            label[j, start: len(x)] = True
        yield ids, attn, label


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
    keys = target_keys(ck, cfg.layers, cfg.roles)
    if out is not None:
        check_output(out, (ck.path,), overwrite=overwrite)  # fail before training, not after
    notes: list[str] = []

    torch.manual_seed(cfg.seed)
    rt = load(ck)
    rows = _encode(rt.tokenizer, task, cfg.max_length, notes)
    job = _prepare(rt, ck, cfg, keys, notes)
    losses, tokens, train_s = _train(rt, job, rows, cfg, progress)
    changed, update_kept = _write_back(ck, job, keys, notes)

    cfg_doc = asdict(cfg)
    ck.record("finetune", **cfg_doc, targets=keys, task=task.name)
    result = FinetuneResult(
        config=cfg_doc, targets=keys, trainable_params=job.n_trainable, params_changed=changed, steps=cfg.steps,
        tokens=tokens, train_s=train_s, wall_s=time.perf_counter() - t0,
        tokens_per_s=tokens / train_s if train_s > 0 else 0.0, peak_rss_mb=peak_rss_mb(), losses=losses,
        update_kept=update_kept, notes=notes, ck=ck)
    if out is not None:
        src = source or {"kind": "finetune", "task": task.name,
                         "task_path": str(task.path.absolute()) if task.path else None}
        result.manifest = ck.save(out, copy=copy, overwrite=overwrite, source={**src, "finetune": result.to_dict()})
        result.wall_s = time.perf_counter() - t0
    return result


@dataclass
class _Job:
    """The model as it will train: the (possibly peft-wrapped) model, the trained modules, their parameters."""

    model: torch.nn.Module  # the base model
    train_model: torch.nn.Module  # what the loop calls: the peft wrapper under LoRA, else the model
    modules: dict  # role key -> module
    params: list  # trainable parameters
    n_trainable: int


def _prepare(rt, ck, cfg: FinetuneConfig, keys: list[str], notes: list[str]) -> _Job:
    """Freeze everything; wrap the chosen matrices in LoRA (peft) or unfreeze them (full); norms train in full."""
    model = rt.model
    modules = {k: rt.module(k) for k in keys}
    names = {id(m): n for n, m in model.named_modules()}
    vectors = [k for k, m in modules.items() if getattr(m, "weight", None) is not None and m.weight.dim() == 1]
    matrices = [k for k in keys if k not in vectors]
    if ck.tied and "lm_head" in keys and cfg.method == "full":
        notes.append("tied embeddings: lm_head is embed, so the one shared matrix trains (input side included)")
    for p in model.parameters():
        p.requires_grad_(False)
    train_model = model
    if cfg.method == "lora" and matrices:
        lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                          target_modules=[names[id(modules[k])] for k in matrices])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*|.*tied.*|.*gradient_checkpointing.*")
            train_model = get_peft_model(model, lcfg)
        if ck.tied and "lm_head" in matrices and "embed" not in matrices:
            notes.append("LoRA on a tied lm_head: trained on the output side only, but merged into the shared matrix, "
                         "so the saved model's input embeddings move by the same update")
        elif ck.tied and "lm_head" in matrices:
            notes.append("LoRA on tied embed and lm_head: two adapters, both merged into the one shared matrix")
    for k in keys if cfg.method == "full" else vectors:
        for p in modules[k].parameters(recurse=False):
            p.requires_grad_(True)
    params = list({id(p): p for p in train_model.parameters() if p.requires_grad}.values())
    return _Job(model, train_model, modules, params, sum(p.numel() for p in params))


def _train(rt, job: _Job, rows, cfg: FinetuneConfig, progress: bool) -> tuple[list[float], int, float]:
    """AdamW over the batches, loss on the label positions only; returns (losses, tokens seen, seconds)."""
    opt = torch.optim.AdamW(job.params, lr=cfg.lr, weight_decay=0.0)
    bounds = [(p, p.detach().clone()) for p in job.params] if cfg.max_delta else []
    losses, tokens = [], 0
    job.train_model.train()
    t0 = time.perf_counter()
    bar = tqdm(_batches(rows, cfg.batch, cfg.steps, cfg.seed, rt.tokenizer.pad_token_id), total=cfg.steps,
               desc=f"finetune {cfg.method}", disable=not progress, leave=False)
    for ids, attn, label in bar:
        predict = torch.zeros_like(label)
        predict[:, :-1] = label[:, 1:]  # position t predicts token t+1
        targets = ids[:, 1:][label[:, 1:]]
        logits = rt.logits(ids, keep=predict, model=job.train_model, attention_mask=attn)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bounds:
            with torch.no_grad():
                for p, p0 in bounds:
                    p.copy_(torch.maximum(torch.minimum(p, p0 + cfg.max_delta), p0 - cfg.max_delta))
        losses.append(loss.item())
        tokens += int(attn.sum())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    job.train_model.eval()
    return losses, tokens, time.perf_counter() - t0


def _write_back(ck, job: _Job, keys: list[str], notes: list[str]) -> tuple[int, float]:
    """Merge LoRA, stage each trained tensor into ``ck``; returns (elements changed, share of the update kept)."""
    model = job.model
    if job.train_model is not model:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*|.*tied.*")
            model = job.train_model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    changed, trained_sq, lost_sq = 0, 0.0, 0.0
    for k in keys:
        for pname, p in job.modules[k].named_parameters(recurse=False):
            pkey = k if pname == "weight" else f"{k}.{pname}"
            if pkey not in ck:
                continue
            ref = ck.resolve(pkey)
            new = ref.view.read(p.detach()).float()
            old = ref.view.read(ck.stored(ref.tensor)).float()
            ck[pkey] = new
            saved = ck[pkey]
            changed += count_changed(old, saved)
            trained_sq += float((new - old).pow(2).sum())
            lost_sq += float((saved - new).pow(2).sum())
    update_kept = 1.0 - math.sqrt(lost_sq / trained_sq) if trained_sq > 0 else 0.0
    if trained_sq > 0 and update_kept < 0.5:
        notes.append(f"only {update_kept:.0%} of the update's norm survives the cast to the stored dtype; "
                     "raise lr or steps, or the change is below the weights' rounding step")
    return changed, update_kept
