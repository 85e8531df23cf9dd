"""Role tables inferred from transformers' own model definition, for families no table covers.

From a config.json alone: the model is built on the meta device (no weights,
never ``trust_remote_code``) for its module tree, parameter shapes and
on-disk names (transformers' own save-time renaming, e.g. fused experts back
to one tensor per expert), and a tiny copy (:mod:`surgeon.roles.shrink`) is
run once with every module recorded (:mod:`surgeon.roles.trace`) to decide
each role by what the module does (:mod:`surgeon.roles.blocks`). The result
is the same :class:`Architecture` a table gives, with ``source="inferred"``;
anything no rule settles has no role (its tensors stay reachable by raw name).
Tables stay the source of truth: :func:`find_architecture` infers only for a
model_type no table names.
"""

from __future__ import annotations

import copy
import json
import re

from surgeon.errors import UnknownArchitecture
from surgeon.roles import blocks
from surgeon.roles.experts import experts as _experts
from surgeon.roles.fused import derived, fused_spec
from surgeon.roles.shrink import shrink
from surgeon.roles.table import Architecture, find_table, supported_model_types
from surgeon.roles.trace import build, same, trace
from surgeon.roles.wrapped import wrap_architecture

_CACHE: dict[str, Architecture | UnknownArchitecture] = {}


def find_architecture(config: dict) -> Architecture:
    """The table for ``model_type`` if one exists, else the role table inferred from transformers' definition."""
    try:
        return find_table(config)
    except UnknownArchitecture as miss:
        if not isinstance(config.get("model_type"), str):
            raise
        try:
            return infer_architecture(config)
        except UnknownArchitecture as why:
            raise UnknownArchitecture(
                f"{str(miss).split('; supported')[0]}; no table and no inference ({why}); "
                f"supported: {', '.join(supported_model_types())} (tables) and what transformers defines; "
                "tensors are still reachable by their raw names"
            ) from None


def infer_architecture(config: dict) -> Architecture:
    """Infer (once per distinct config) the role table of ``config``'s family; UnknownArchitecture says why not."""
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _CACHE:
        try:
            _CACHE[key] = _infer(config)
        except UnknownArchitecture as e:
            _CACHE[key] = e
        except Exception as e:  # noqa: BLE001 - transformers' own failure to build or run the family is a reason, not a crash
            _CACHE[key] = UnknownArchitecture(
                f"transformers could not build and run a tiny {config.get('model_type')} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
            )
    got = _CACHE[key]
    if isinstance(got, UnknownArchitecture):
        raise got
    return got


def _infer(config: dict) -> Architecture:
    import torch
    import transformers
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    mt = config["model_type"]
    if mt not in CONFIG_MAPPING:
        raise UnknownArchitecture(f"transformers {transformers.__version__} has no model_type {mt!r}")
    if mt not in CAUSAL and not getattr(CONFIG_MAPPING[mt], "sub_configs", None):
        raise UnknownArchitecture(f"transformers has no causal-LM class for {mt!r}")
    cls = CONFIG_MAPPING[mt]
    if getattr(cls, "sub_configs", None):
        return wrap_architecture(config, _text_tower)
    full = cls.from_dict(config)
    if getattr(full, "is_encoder_decoder", False):
        raise UnknownArchitecture("an encoder-decoder family")
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(full)
    small_cfg = shrink(config)
    model = build(cls.from_dict(small_cfg))
    rec = trace(model, min(getattr(model.config, "vocab_size", 256) or 256, 256))
    if not rec.causal:
        raise UnknownArchitecture("its attention is not causal (an encoder used as a decoder): roles assume a decoder")
    if not rec.probed:
        raise UnknownArchitecture(
            "its attention does not dispatch through transformers' AttentionInterface, so it cannot be observed"
        )
    layers = _layer_list(model)
    if layers is None:
        raise UnknownArchitecture("no ModuleList of decoder layers found")
    found = blocks.Found()
    n_layers = len(model.get_submodule(layers))
    for i in range(n_layers):
        blocks.layer(model, rec, f"{layers}.{i}", found)
    _drop_inline_norms(model, rec, layers, found)
    _top(model, rec, layers, found)
    offset = _norm_offset(model, found)
    _drop_non_linear(model, rec, found)
    disk = _disk_names(model)
    return _assemble(config, small_cfg, full, skeleton, model, layers, found, disk, offset, rec)


def _text_tower(config: dict) -> Architecture:
    """A wrapped text tower's table: bundled, else inferred (its own refusal says why not)."""
    try:
        return find_table(config)
    except UnknownArchitecture:
        pass
    try:
        return infer_architecture(config)
    except UnknownArchitecture as why:
        raise UnknownArchitecture(f"its {config.get('model_type')} text tower has no roles: {why}") from None


def _layer_list(model) -> str | None:
    """The ModuleList of decoder layers: the pp plan's, else the only one as long as the config's layer count."""
    import torch.nn as nn

    n = getattr(model.config, "num_hidden_layers", None)
    lists = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name and len(m) == n]
    base = model.base_model_prefix
    for k in getattr(model.config, "base_model_pp_plan", None) or {}:
        if f"{base}.{k}" in lists:
            return f"{base}.{k}"
    outer = [x for x in lists if not any(x.startswith(y + ".") for y in lists)]
    return outer[0] if len(outer) == 1 else None


def _drop_inline_norms(model, rec, layers: str, found: blocks.Found) -> None:
    """A pre norm keeps its role only if its output feeds nothing but its block (checked in the first layer
    holding each module path: one rerun pair per path); a norm the residual stream itself passes through
    is no pre norm, and no other role fits it."""
    layer_re = re.compile(re.escape(layers) + r"\.(\d+)\.")
    verdict: dict[str, bool | None] = {}
    for norm, block in found.feeds.items():
        m = layer_re.match(norm)
        path = norm[m.end():]
        if path not in verdict:
            verdict[path] = blocks.feeds_only(model, rec, norm, block, f"{layers}.{m.group(1)}")
        if verdict[path] is False:
            found.roles.pop(norm, None)


def _top(model, rec, layers: str, found: blocks.Found) -> None:
    """embed, lm_head, final_norm (the norm between the last layer's output and the head's input: not one
    inside a head that transforms first, ModernBERT's), pos_embed (added to the token embedding)."""
    import torch.nn as nn

    names = {id(m): n for n, m in model.named_modules()}
    embed = names.get(id(model.get_input_embeddings()))
    head = model.get_output_embeddings()
    head = names.get(id(head)) if head is not None else None
    found.roles[embed] = "embed"
    if head:
        found.roles[head] = "lm_head"
    first = rec.calls.get(f"{layers}.0")
    outside = [
        n for n, m in model.named_modules() if n and not n.startswith(layers + ".") and n != layers and n in rec.calls
    ]
    last = rec.calls.get(f"{layers}.{len(model.get_submodule(layers)) - 1}")
    if head and head in rec.calls and last is not None:
        finals = [
            n
            for n in outside
            if blocks.is_norm(model.get_submodule(n))
            and same(rec.calls[n].out, rec.calls[head].inp)
            and same(rec.calls[n].inp, last.out)
        ]
        if len(finals) == 1:
            found.roles[finals[0]] = "final_norm"
    tok = rec.calls.get(embed)
    for n in outside:
        m = model.get_submodule(n)
        if n != embed and isinstance(m, nn.Embedding) and tok is not None and first is not None:
            pos = rec.calls[n].out
            if pos is not None and pos.shape[-1] == tok.out.shape[-1] and same(tok.out + pos, first.inp):
                found.roles[n] = "pos_embed"


def _norm_offset(model, found: blocks.Found) -> float:
    """The family's norm gain offset (one for all); norms that disagree or cannot be silenced lose their role."""
    offsets = {
        n: blocks.norm_offset(model.get_submodule(n))
        for n, r in found.roles.items()
        if r.startswith("norm.") or r in ("final_norm", "attn.q_norm", "attn.k_norm")
    }
    values = [v for v in offsets.values() if v is not None]
    common = max(set(values), key=values.count) if values else 0.0
    for n, v in offsets.items():
        if v != common:
            del found.roles[n]
    return common


def _drop_non_linear(model, rec, found: blocks.Found) -> None:
    """A matrix role needs a module that computes x @ W.T + b (or Conv1D's x @ W + b); others lose it."""
    for n in [n for n, r in found.roles.items() if r.startswith(("attn.", "mlp.")) and not r.endswith("_norm")]:
        if r := found.roles[n]:
            if r == "mlp.router":
                continue
            if blocks.linear_orientation(model.get_submodule(n), rec.calls.get(n)) is None:
                del found.roles[n]
    for n in list(found.fused):
        if blocks.linear_orientation(model.get_submodule(n), rec.calls.get(n)) is None:
            del found.fused[n]


def _disk_names(model) -> dict[str, list[tuple[str, object]]]:
    """In-memory parameter name -> [(on-disk name, on-disk tensor)], by transformers' own save-time conversion."""
    from transformers.core_model_loading import revert_weight_conversion

    out = {}
    for name, p in model.state_dict().items():
        try:
            got = revert_weight_conversion(model, {name: p.detach()})
        except Exception:  # noqa: BLE001 - a conversion that needs several keys at once: leave it without a role
            got = {}
        out[name] = list(got.items())
    return out


def _assemble(config, small_cfg, full, skeleton, model, layers, found, disk, offset, rec) -> Architecture:
    """The inferred :class:`Architecture`: roles by on-disk module path, plus the family-wide facts."""
    import transformers

    attr = type(full).attribute_map
    top, roles, fused, loaded = _disk_layout(config, small_cfg, skeleton, model, layers, found, disk)
    experts = _experts(config, model, found, disk, layers, small_cfg, skeleton)
    transposed = any(
        blocks.linear_orientation(model.get_submodule(m), rec.calls.get(m))
        for m, r in found.roles.items()
        if r in ("attn.o", "mlp.down")
    )
    head = skeleton.get_output_embeddings()
    tie_default = bool(type(full)().tie_word_embeddings) if hasattr(full, "tie_word_embeddings") else head is None
    doc = (
        f"inferred from transformers {transformers.__version__}'s {type(model).__name__} by tracing a tiny model; "
        "review with `surgeon inspect --write-table`"
    )
    return Architecture(
        name=config["model_type"],
        doc=doc,
        model_types=(config["model_type"],),
        architectures=(type(model).__name__,),
        base_prefix=model.base_model_prefix,
        tie_default=tie_default,
        config={
            "num_layers": attr.get("num_hidden_layers", "num_hidden_layers"),
            "hidden_size": attr.get("hidden_size", "hidden_size"),
            "vocab_size": attr.get("vocab_size", "vocab_size"),
            "tie": "tie_word_embeddings",
        },
        top=top,
        layer=layers + ".{layer}",
        roles=roles,
        fused=fused,
        experts=experts,
        derived=derived(config, fused),
        transposed=bool(transposed),
        loaded_names={k: v for k, v in loaded.items() if k != v},
        bias_flags=_bias_flags(full, {**roles, **{r: spec["module"] for r, spec in fused.items()}}),
        norm_offset=offset,
        source="inferred",
    )


def _disk_layout(config, small_cfg, skeleton, model, layers, found, disk) -> tuple[dict, dict, dict, dict]:
    """(top role -> disk module, layer role -> path in a layer, fused role -> spec, renames on load)."""
    layer_re = re.compile(re.escape(layers) + r"\.\d+\.")
    loaded: dict[str, str] = {}
    roles_by_path: dict[str, set[str]] = {}
    top: dict[str, str] = {}
    for mem, role in found.roles.items():
        d = _disk_module(mem, disk, layer_re, loaded)
        if d is None:
            continue
        if layer_re.match(d + "."):
            roles_by_path.setdefault(layer_re.sub("", d + ".", count=1)[:-1], set()).add(role)
        elif role in ("embed", "lm_head", "final_norm", "pos_embed"):
            top[role] = d
    roles, fused = _unique(roles_by_path), {}
    for mem, (frole, parts) in found.fused.items():
        d = _disk_module(mem, disk, layer_re, loaded)
        spec = fused_spec(config, small_cfg, parts, model, skeleton, mem) if d else None
        if spec and layer_re.match(d + "."):
            fused[frole] = {"module": layer_re.sub("", d + ".", count=1)[:-1], **spec}
    return top, roles, fused, loaded


def _disk_module(mem_module: str, disk: dict, layer_re: re.Pattern, loaded: dict) -> str | None:
    """The on-disk module of in-memory module ``mem_module`` (noting a rename in ``loaded``), None if not one."""
    got = disk.get(mem_module + ".weight") or []
    if len(got) != 1 or not got[0][0].endswith(".weight"):
        return None
    d = got[0][0][: -len(".weight")]
    _note_rename(layer_re.sub("", mem_module), layer_re.sub("", d), loaded)
    return d


def _note_rename(mem: str, disk: str, loaded: dict) -> None:
    a, b = mem.split("."), disk.split(".")
    if len(a) == len(b):
        for x, y in zip(a, b):
            if x != y and not x.isdigit():
                loaded[y] = x


def _unique(roles_by_path: dict[str, set[str]]) -> dict[str, str]:
    """role -> module path, for roles held by exactly one path with exactly one role."""
    count: dict[str, int] = {}
    for rs in roles_by_path.values():
        for r in rs:
            count[r] = count.get(r, 0) + 1
    return {next(iter(rs)): p for p, rs in roles_by_path.items() if len(rs) == 1 and count[next(iter(rs))] == 1}


def _bias_flags(full, roles: dict[str, str]) -> dict:
    """Config switches named *bias* that give layer roles a bias: the skeleton built with each off, then on."""
    import torch
    from transformers import AutoModelForCausalLM

    out = {}
    for key in ("attention_bias", "mlp_bias", "qkv_bias", "use_bias", "bias"):
        if not isinstance(getattr(full, key, None), bool):
            continue
        names = []
        for value in (False, True):
            cfg = copy.deepcopy(full)
            setattr(cfg, key, value)
            try:
                with torch.device("meta"):
                    names.append(set(AutoModelForCausalLM.from_config(cfg).state_dict()))
            except Exception:  # noqa: BLE001 - a flag the family cannot flip says nothing
                break
        if len(names) == 2:
            on = names[1] - names[0]
            gained = sorted(r for r, path in roles.items() if any(n.endswith(f".{path}.bias") for n in on))
            if gained:
                out[key] = gained
    return out


def table_json(arch: Architecture) -> dict:
    """``arch`` as a table file (``surgeon/roles/architectures/<name>.json``) for review; it reads back unchanged."""
    doc = {
        "doc": arch.doc,
        "model_types": list(arch.model_types),
        "architectures": list(arch.architectures),
        "base_prefix": arch.base_prefix,
        "tie_default": arch.tie_default,
        "config": dict(arch.config),
        "top": dict(arch.top),
        "layer": arch.layer,
        "roles": dict(arch.roles),
    }
    optional = {
        "fused": arch.fused,
        "experts": arch.experts,
        "derived": arch.derived,
        "transposed": arch.transposed,
        "loaded_names": arch.loaded_names,
        "bias_flags": arch.bias_flags,
        "norm_offset": arch.norm_offset,
        "text_config": arch.text_config,
        "text_defaults": arch.text_defaults,
        "aliases": arch.aliases,
    }
    doc.update({k: v for k, v in optional.items() if v})
    Architecture.from_json(arch.name, json.loads(json.dumps(doc)))  # a table that would not load is a bug here
    return doc
