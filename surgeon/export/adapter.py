"""An edit as a PEFT LoRA adapter: ΔW = W_edited − W_original as B·A, per tensor.

A rank-one edit (ROME, directional ablation) is exactly rank one, so its
adapter is exact up to the rounding of the stored edited tensor — which is not
small: W + ΔW cast to bf16 differs from W + ΔW by ~3% of ‖ΔW‖ for a ROME edit
(fp16 ~0.4%), so the residual against the edited checkpoint is at that level
while base + adapter is the edit as computed (factors are stored in float32); a denser edit
is truncated by SVD (Eckart–Young: the best rank-r approximation in Frobenius
norm), and each tensor reports its relative residual ‖ΔW − BA‖/‖ΔW‖.

The rank of each tensor is, in order of precedence: ``rank`` (a cap), ``tol``
(the smallest rank whose relative residual is ≤ tol), or by default the
smallest rank whose residual is at the rounding level of the stored edited
tensor (twice the expected bf16/fp16 rounding error of the changed entries) —
so a rank-one edit stored in bf16 exports at rank 1.

What LoRA cannot say is reported, never dropped silently:

* a changed bias (or one an edit added, e.g. a baked steering vector) becomes
  LoRA's ``lora_bias`` on that module (peft ≥ 0.14), which adds to the output
  without the base needing a bias; zero biases added only to satisfy a config
  flag are no-ops; peft cannot put ``lora_bias`` on an embedding, so an
  adapter cannot hold both;
* a changed norm (any non-matrix module) goes to ``modules_to_save`` (peft
  stores the module's full weights and swaps them in on load);
* new tensors other than biases, changed shapes (added vocabulary rows),
  removed tensors, per-expert weights that transformers fuses, and config
  changes other than those bias flags cannot be expressed: an error, or with
  ``allow_skip`` a list of what was left out and why.

The adapter's file names come from peft itself: the LoRA layout is built on a
``meta``-device copy of the model (no weights loaded), so the keys and shapes
are peft's own, and module names come from the role table.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from surgeon.errors import EditError, SurgeonError
from surgeon.export.lowrank import factor
from surgeon.io.atomic import atomic_output, check_output
from surgeon.io.changes import IGNORED_CONFIG, changed_names, config_changes, oriented, unit_roundoff, whole_ref
from surgeon.io.checkpoint import Checkpoint, open_checkpoint

REPORT = "surgeon_adapter.json"


class AdapterError(EditError):
    """An edit cannot be written as a LoRA adapter (or only partly, without allow_skip)."""


@dataclass
class TensorExport:
    """What happened to one changed tensor.

    ``kind``: ``lora`` (ΔW = BA at ``rank``), ``bias`` (peft ``lora_bias``),
    ``modules_to_save`` (module copied whole), ``noop`` (zero bias added for
    a config flag) or ``skipped`` (``reason`` says why).
    """

    key: str
    tensor: str
    module: str | None
    kind: str
    shape: list[int]
    rank: int | None = None
    residual: float | None = None  # ‖ΔW − BA‖ / ‖ΔW‖
    rounding: float | None = None  # expected storage rounding of the edited tensor, relative to ‖ΔW‖
    delta_norm: float | None = None
    reason: str | None = None


@dataclass
class AdapterExport:
    out: str
    base: str
    edited: str
    tensors: list[TensorExport] = field(default_factory=list)
    config_changes: dict = field(default_factory=dict)
    lora_bias: bool = False
    modules_to_save: list[str] = field(default_factory=list)
    parameters: int = 0

    @property
    def skipped(self) -> list[TensorExport]:
        return [t for t in self.tensors if t.kind == "skipped"]

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- entry


def export_adapter(edited, base, out, *, rank: int | None = None, tol: float | None = None,
                   allow_skip: bool = False, overwrite: bool = False) -> AdapterExport:
    """Write ``edited − base`` as a PEFT LoRA adapter directory at ``out``.

    ``edited`` and ``base``: checkpoint directories or :class:`Checkpoint`
    objects (staged changes of ``edited`` count). ``rank``: cap per tensor;
    ``tol``: relative residual to reach per tensor (see the module doc for the
    default). ``allow_skip``: write what can be written and list the rest
    instead of raising. Loading ``base`` with ``PeftModel.from_pretrained``
    and this adapter reproduces ``edited`` (unmerged; merging is impossible
    where ``lora_bias`` sits on a module without a bias).
    """
    ed = edited if isinstance(edited, Checkpoint) else open_checkpoint(edited)
    bs = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    if rank is not None and rank < 1:
        raise AdapterError(f"rank {rank}: must be at least 1")
    if tol is not None and not 0 <= tol < 1:
        raise AdapterError(f"tol {tol}: must be in [0, 1)")
    arch = bs.architecture
    if arch is None:
        raise AdapterError(f"{bs.path}: unknown architecture; adapter targets come from the role table")
    if ed.architecture is None or ed.architecture.name != arch.name:
        raise AdapterError(f"{ed.path}: architecture {getattr(ed.architecture, 'name', None)} "
                           f"differs from the base's {arch.name}")
    out = check_output(out, (bs.path, ed.path), overwrite=overwrite)  # fail before the factorisations

    model = _meta_model(bs)
    modules = dict(model.named_modules())
    report = AdapterExport(out=str(out), base=str(bs.path), edited=str(ed.path))
    parts = _collect(ed, bs, arch, modules, report, rank, tol)
    report.config_changes = _config_changes(ed, bs, arch, report)
    _reconcile(parts, report, modules, allow_skip, ed, bs)
    report.lora_bias = bool(parts.biases)
    report.modules_to_save = sorted(parts.save_whole)
    state, config = _build(model, parts.lora, parts.embed_lora, parts.biases, parts.save_whole, ed, arch, modules, bs)
    report.parameters = sum(v.numel() for v in state.values())
    _write(out, state, config, report, overwrite)
    return report


@dataclass
class _Parts:
    """What the adapter will hold, by peft module name."""

    lora: dict = field(default_factory=dict)  # module -> (B, A) in peft's Linear shapes
    embed_lora: dict = field(default_factory=dict)  # module -> (B (hidden, r), A (r, vocab))
    biases: dict = field(default_factory=dict)  # module -> Δbias (peft lora_bias)
    save_whole: set = field(default_factory=set)  # modules copied whole (norms)


def _collect(ed, bs, arch, modules, report: AdapterExport, rank, tol) -> _Parts:
    """Classify every changed tensor and factor each matrix change ΔW ≈ B A."""
    parts = _Parts()
    for name in changed_names(ed, bs):
        rows = _classify(name, ed, bs, arch, modules)
        report.tensors.extend(rows)
        t = rows[0]
        if t.kind == "lora":
            mod = modules[t.module]
            new, old = _pair(name, ed, bs)
            delta = new - old
            rounding = unit_roundoff(ed.stored_dtype(name)) / math.sqrt(3) * float(new[delta != 0].norm())
            if isinstance(mod, torch.nn.Embedding):
                delta = delta.T  # peft's embedding LoRA: ΔE = (B A)ᵀ with B (hidden, r), A (r, vocab)
            b, a = factor(delta, t, rounding, rank, tol)
            (parts.embed_lora if isinstance(mod, torch.nn.Embedding) else parts.lora)[t.module] = (b, a)
            if len(rows) > 1:  # tied head: the same ΔW seen from the output side
                head = rows[1]
                parts.lora[head.module] = (a.T.clone(), b.T.clone())
                head.rank, head.residual, head.rounding, head.delta_norm = t.rank, t.residual, t.rounding, t.delta_norm
        elif t.kind == "bias":
            parts.biases[t.module] = _delta(name, ed, bs)
        elif t.kind == "modules_to_save":
            parts.save_whole.add(t.module)
    return parts


def _reconcile(parts: _Parts, report: AdapterExport, modules, allow_skip: bool, ed, bs) -> None:
    """What peft cannot hold together is skipped (or refused without ``allow_skip``); bias-only modules
    get a zero LoRA pair to carry their ``lora_bias``."""
    # lora_bias is one switch for the whole adapter; peft refuses it on embeddings
    if parts.biases and parts.embed_lora:
        names = {t.tensor for t in report.tensors if t.module in parts.embed_lora}
        for t in report.tensors:
            if t.tensor in names:
                t.kind, t.reason = "skipped", ("peft cannot put lora_bias (needed for the changed biases) "
                                               "on an embedding")
                parts.lora.pop(t.module, None)
        parts.embed_lora.clear()
    skipped = report.skipped
    if skipped and not allow_skip:
        first = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise AdapterError(f"{first.key} ({first.tensor}): {first.reason}{more}; "
                           "pass allow_skip / --allow-skip to export the rest")
    if not (parts.lora or parts.embed_lora or parts.biases or parts.save_whole):
        raise AdapterError(f"{ed.path}: no tensor differs from {bs.path} in a way an adapter can carry")
    for m in parts.biases:  # a bias-only module still needs a (zero) LoRA pair to carry lora_bias
        if m not in parts.lora:
            w = modules[m]
            parts.lora[m] = (torch.zeros(_out_features(w), 1), torch.zeros(1, _in_features(w)))
            for t in report.tensors:
                if t.module == m and t.kind == "bias":
                    t.rank = 1


# --------------------------------------------------------------------------- what changed


def _classify(name, ed, bs, arch, modules) -> list[TensorExport]:
    """One row per changed tensor (two for a tied embedding: embed and lm_head)."""
    ref = whole_ref(ed, name) or whole_ref(bs, name)
    key = ref.key if ref else name
    module_path, _, param = name.rpartition(".")
    module = arch.module_in_model(module_path, modules)
    new = name not in bs.entries
    gone = name not in ed.entries and name not in ed.added
    shape = list(bs.entries[name].shape if gone else ed.stored(name).shape)
    row = TensorExport(key=key, tensor=name, module=module, kind="skipped", shape=shape)

    def skip(reason):
        row.reason = reason
        return [row]

    if gone:
        return skip("removed by the edit; an adapter cannot delete a tensor")
    if not new and list(bs.entries[name].shape) != shape:
        return skip(f"shape changed {list(bs.entries[name].shape)} -> {shape} (added rows?); "
                    "LoRA keeps the base's shapes")
    if ref is None:
        return skip("tensor has no role; adapter targets come from the role table")
    if module is None:
        return skip(f"module {module_path!r} is not a module of the transformers model (fused MoE experts?); "
                    "LoRA cannot target it")
    mod = modules[module]
    linear = _is_linear(mod)
    if param == "bias" and linear:
        if new and not torch.any(ed.stored(name) != 0):
            row.kind, row.reason = "noop", "zero bias added only so a config flag loads"
            return [row]
        row.kind = "bias"
        row.delta_norm = float(_delta(name, ed, bs).norm())
        return [row]
    if new:
        return skip("new tensor that is not a bias; LoRA cannot add parameters")
    if param == "weight" and (linear or isinstance(mod, torch.nn.Embedding)) and len(shape) == 2:
        row.kind = "lora"
        rows = [row]
        if ref.role == "embed" and ed.tied:
            head = arch.module_in_model(arch.top["lm_head"], modules)
            if head is None or not _is_linear(modules[head]):
                return skip("tied embedding: lm_head module not found, so the output side cannot be adapted")
            rows.append(TensorExport(key="lm_head", tensor=name, module=head, kind="lora", shape=shape,
                                     reason="tied to embed: the same ΔW on the output side"))
        return rows
    if len(shape) <= 1 and not linear and not isinstance(mod, torch.nn.Embedding):
        row.kind = "modules_to_save"
        row.delta_norm = float(_delta(name, ed, bs).norm())
        return [row]
    return skip(f"{type(mod).__name__}.{param} of shape {shape} has no LoRA form")


def _config_changes(ed, bs, arch, report) -> dict:
    """Config keys that differ; bias flags are fine when their biases were all carried, others are skipped."""
    changes = config_changes(bs.config, ed.config, ignore=IGNORED_CONFIG)
    flags = arch.bias_flags or {}
    for k, (a, b) in changes.items():
        if k in flags and not a and b:
            continue  # the added biases are checked tensor by tensor (bias or noop rows)
        report.tensors.append(TensorExport(
            key=f"config.{k}", tensor="config.json", module=None, kind="skipped", shape=[],
            reason=f"config {k}: {a!r} -> {b!r}; an adapter cannot change the base config"))
    return changes


# --------------------------------------------------------------------------- numbers


def _pair(name, ed, bs) -> tuple[torch.Tensor, torch.Tensor]:
    """(edited, original) in (out, in) orientation (Conv1D shown transposed, as the role view does), float32."""
    new = ed.stored(name)
    old = bs.original(name) if name in bs.entries else torch.zeros_like(new)
    return oriented(ed, name, new).float(), oriented(ed, name, old).float()


def _delta(name, ed, bs) -> torch.Tensor:
    new, old = _pair(name, ed, bs)
    return new - old


# --------------------------------------------------------------------------- peft


def _meta_model(bs):
    """The base's transformers model on the meta device: module names and shapes, no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(bs.path))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def _is_linear(mod) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(mod, (torch.nn.Linear, Conv1D))


def _out_features(mod) -> int:
    return mod.out_features if isinstance(mod, torch.nn.Linear) else mod.weight.shape[1]


def _in_features(mod) -> int:
    return mod.in_features if isinstance(mod, torch.nn.Linear) else mod.weight.shape[0]


def _build(model, lora, embed_lora, biases, save_whole, ed, arch, modules, bs):
    """peft's own layout for these targets (on meta), filled with our factors."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    ranks = {m: b.shape[1] for m, (b, a) in lora.items()} | {m: b.shape[1] for m, (b, a) in embed_lora.items()}
    top = max(ranks.values()) if ranks else 1
    pattern = {re.escape(m): r for m, r in ranks.items() if r != top}
    tied = bool(embed_lora) and ed.tied
    config = LoraConfig(
        r=top,
        lora_alpha=top,  # scaling = alpha / r = 1 for every module (alpha_pattern follows rank_pattern)
        target_modules=sorted(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        lora_dropout=0.0,
        bias="none",
        lora_bias=bool(biases),
        modules_to_save=sorted(save_whole) or None,
        fan_in_fan_out=bool(arch.transposed),
        ensure_weight_tying=tied,
        task_type="CAUSAL_LM",
        inference_mode=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about meta tensors, tied layers, unmergeable lora_bias
        peft_model = get_peft_model(model, config)
        layout = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    state = {}
    prefix = "base_model.model."
    for key, meta in layout.items():
        value = _value(key[len(prefix):], lora, embed_lora, biases, save_whole, ed, arch, modules)
        if value is None:
            raise SurgeonError(f"adapter key {key!r}: peft expects it but surgeon has no value for it (a bug)")
        if tuple(value.shape) != tuple(meta.shape):
            raise SurgeonError(f"adapter key {key!r}: shape {tuple(value.shape)} "
                               f"but peft expects {tuple(meta.shape)} (a bug)")
        state[key] = value.contiguous()
    saved = peft_model.peft_config["default"]
    saved.base_model_name_or_path = str(bs.path)
    return state, saved


def _value(rest, lora, embed_lora, biases, save_whole, ed, arch, modules):
    for m, (b, a) in lora.items():
        if rest.startswith(m + "."):
            tail = rest[len(m) + 1:]
            if tail == "lora_A.weight":
                return a
            if tail == "lora_B.weight":
                return b
            if tail == "lora_B.bias":
                return biases.get(m, torch.zeros(b.shape[0]))
    for m, (b, a) in embed_lora.items():
        if rest == m + ".lora_embedding_A":
            return a
        if rest == m + ".lora_embedding_B":
            return b
    for m in save_whole:
        if rest.startswith(m + "."):
            param = rest[len(m) + 1:]
            name = _disk_name(m, param, ed, arch)
            return ed.stored(name).float() if name else None
    return None


def _disk_name(module, param, ck, arch):
    """On-disk tensor name for a loaded-model module's parameter."""
    for name in list(ck.entries) + list(ck.added):
        mp, _, p = name.rpartition(".")
        if p == param and arch.module_in_model(mp, {module}) == module:
            return name
    return None


# --------------------------------------------------------------------------- output


def _write(out: Path, state, config, report, overwrite) -> None:
    """adapter_config.json + adapter_model.safetensors + surgeon_adapter.json, swapped in atomically."""
    from safetensors.torch import save_file

    with atomic_output(out, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        (tmp / REPORT).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
