"""The fine-tune's loop, one process or one rank of many: what to train, the data, the steps, the deltas.

:mod:`surgeon.study.finetune` runs it in this process;
:mod:`surgeon.study.finetune_dist` runs it on every rank under torchrun with
the model sharded by FSDP2. The loop is the same: each rank takes its share of
every batch (rows ``rank::world``) and scales its summed loss so that FSDP's
averaged gradient equals the single process's. The result leaves as one
delta per trained tensor (LoRA: peft's ``get_delta_weight``; trained in full:
new − start), each written to its own safetensors file (:func:`write_deltas`),
which the caller stages into the checkpoint as base + delta read back at save
(:func:`surgeon.study.finetune.stage_deltas`).
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from tqdm.auto import tqdm

from surgeon.study.config import FinetuneConfig, FinetuneError
from surgeon.study.task import Task

GROUPS = ("attn", "mlp", "norm")
TOP = ("embed", "lm_head", "final_norm")


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


def encode(tok, task: Task, max_length: int, notes: list[str] | None = None) -> list[tuple[list[int], int]]:
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


def batches(rows, batch: int, steps: int, seed: int, pad: int):
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




def lora_start(name: str, shape, seed: int) -> torch.Tensor:
    """LoRA's A factor at the start: peft's kaiming-uniform (a = √5), drawn from a generator seeded by the run's
    seed and the parameter's name, so any process draws any factor alone (one process and every FSDP rank
    agree without sending it); B starts at zero, as in peft."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.nn.init.kaiming_uniform_(torch.empty(tuple(shape)), a=math.sqrt(5), generator=g)


@dataclass
class Job:
    """The model as it will train: the (possibly peft-wrapped) model, the trained modules, their parameters."""

    model: torch.nn.Module  # the base model
    train_model: torch.nn.Module  # what the loop calls: the peft wrapper under LoRA, else the model
    modules: dict  # role key -> module (the base layer under LoRA)
    lora: dict  # role key -> its peft LoRA layer
    params: list  # trainable parameters
    n_trainable: int


def prepare(rt, ck, cfg: FinetuneConfig, keys: list[str], notes: list[str]) -> Job:
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
    train_model, lora = model, {}
    if cfg.method == "lora" and matrices:
        lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                          target_modules=[names[id(modules[k])] for k in matrices])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*|.*tied.*|.*gradient_checkpointing.*")
            train_model = get_peft_model(model, lcfg)
        lora = {k: model.get_submodule(names[id(modules[k])]) for k in matrices}  # peft swapped them in place
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_A." in name and p.device.type != "meta":  # on meta (FSDP ranks) each rank draws it itself
                    p.copy_(lora_start(name, p.shape, cfg.seed))
        if ck.tied and "lm_head" in matrices and "embed" not in matrices:
            notes.append("LoRA on a tied lm_head: trained on the output side only, but merged into the shared matrix, "
                         "so the saved model's input embeddings move by the same update")
        elif ck.tied and "lm_head" in matrices:
            notes.append("LoRA on tied embed and lm_head: two adapters, both merged into the one shared matrix")
    for k in keys if cfg.method == "full" else vectors:
        for p in modules[k].parameters(recurse=False):
            p.requires_grad_(True)
    params = list({id(p): p for p in train_model.parameters() if p.requires_grad}.values())
    return Job(model, train_model, modules, lora, params, sum(p.numel() for p in params))


def train(rt, job: Job, rows, cfg: FinetuneConfig, progress: bool, *, rank: int = 0,
          world: int = 1) -> tuple[list[float], int, float]:
    """AdamW over the batches, loss on the label positions only; returns (losses, tokens seen, seconds).

    Rank ``rank`` of ``world`` computes rows ``rank::world`` of every batch; its
    loss is its share of the batch's summed cross-entropy × ``world``, so the
    gradient FSDP averages over the ranks is the whole batch's mean-loss gradient.
    """
    opt = torch.optim.AdamW(job.params, lr=cfg.lr, weight_decay=0.0)
    bounds = [(p, p.detach().clone()) for p in job.params] if cfg.max_delta else []
    losses, tokens = [], 0
    job.train_model.train()
    t0 = time.perf_counter()
    bar = tqdm(batches(rows, cfg.batch, cfg.steps, cfg.seed, rt.tokenizer.pad_token_id), total=cfg.steps,
               desc=f"finetune {cfg.method}", disable=not progress or rank != 0, leave=False)
    for ids, attn, label in bar:
        n_all = int(label[:, 1:].sum())  # predicted tokens in the whole batch
        tokens += int(attn.sum())
        ids, attn, label = ids[rank::world], attn[rank::world], label[rank::world]
        width = int(attn.sum(1).max())  # this rank's rows, trimmed to their own longest
        ids, attn, label = ids[:, :width], attn[:, :width], label[:, :width]
        predict = torch.zeros_like(label)
        predict[:, :-1] = label[:, 1:]  # position t predicts token t+1
        targets = ids[:, 1:][label[:, 1:]].to(rt.device)
        logits = rt.logits(ids.to(rt.device), keep=predict.to(rt.device), model=job.train_model,
                           attention_mask=attn.to(rt.device))
        total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets, reduction="sum")
        opt.zero_grad(set_to_none=True)
        (total * (world / n_all)).backward()
        opt.step()
        if bounds:
            with torch.no_grad():
                for p, p0 in bounds:
                    p.copy_(torch.maximum(torch.minimum(p, p0 + cfg.max_delta), p0 - cfg.max_delta))
        seen = total.detach()
        if world > 1:
            dist.all_reduce(seen)
        losses.append(seen.item() / n_all)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    job.train_model.eval()
    return losses, tokens, time.perf_counter() - t0


def deltas(job: Job, keys: list[str], ck, owner=None):
    """Yield (parameter key, float32 delta in role orientation) for every trained tensor, one at a time.

    LoRA matrices give peft's ``get_delta_weight`` (B·A·scaling, with its
    fan-in/fan-out and embedding conventions); tensors trained in full give
    new − the checkpoint's value, once per stored tensor (a tied ``embed`` /
    ``lm_head`` trained in full is one matrix). ``owner(key)``: the FSDP module
    holding the key's parameters, unsharded around the read (a collective:
    every rank must iterate).
    """
    done: set[str] = set()
    for k in keys:
        home = owner(k) if owner else None
        if home is not None:
            home.unshard()
        with torch.no_grad():
            if k in job.lora:
                yield k, ck.resolve(k).view.read(job.lora[k].get_delta_weight("default")).float().cpu()
            for pname, p in job.modules[k].named_parameters(recurse=False):
                pkey = k if pname == "weight" else f"{k}.{pname}"
                if not p.requires_grad or pkey not in ck or ck.resolve(pkey).tensor in done:
                    continue
                ref = ck.resolve(pkey)
                done.add(ref.tensor)
                yield pkey, ref.view.read(p.detach().float().cpu()) - ref.view.read(ck.stored(ref.tensor)).float()
        if home is not None:
            home.reshard()


def write_deltas(deltas, folder: Path, *, write: bool = True) -> list[Path]:
    """Save each (key, delta) of ``deltas`` to its own file ``folder/delta-NNNNN.safetensors``, one at a time;
    returns the files. ``write=False`` (FSDP ranks > 0) only iterates: :func:`deltas` is a collective there."""
    files = []
    for n, (pkey, delta) in enumerate(deltas):
        if write:
            files.append(folder / f"delta-{n:05d}.safetensors")
            save_file({pkey: delta.contiguous()}, str(files[-1]))
    return files
