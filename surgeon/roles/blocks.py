"""Roles inside one decoder layer, decided from a traced forward pass (:mod:`surgeon.roles.trace`).

Each rule is a behaviour, not a name: ``attn.v`` is the projection whose output
columns are the values the attention function received; ``mlp.gate`` the one
whose activation multiplies ``mlp.up`` into ``mlp.down``'s input; a norm is a
module whose output does not change when its input is scaled, named by what
its output feeds or what its input came from. Whatever no rule settles keeps
no role. Results are keyed by module name in the traced (tiny) model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from surgeon.roles.trace import SEQ, Trace, _first_tensor, all_tokens, first_token, match_columns, same


@dataclass
class Found:
    """Roles found in a model: module -> role, fused module -> (role, part -> column list), experts."""

    roles: dict[str, str] = field(default_factory=dict)
    fused: dict[str, tuple[str, dict[str, list[int]]]] = field(default_factory=dict)
    expert_params: dict[str, str] = field(default_factory=dict)  # 3-D in-memory parameter -> "experts" module
    routed: dict[str, str] = field(default_factory=dict)  # MoE block name -> experts module name
    block_inputs: dict[str, object] = field(default_factory=dict)  # MoE block name -> its traced input
    feeds: dict[str, str] = field(default_factory=dict)  # pre norm -> the attention / MLP block it feeds
    notes: list[str] = field(default_factory=list)


def is_linear(m) -> bool:
    w = getattr(m, "weight", None)
    return w is not None and getattr(w, "dim", lambda: 0)() == 2 and type(m).__name__ not in ("Embedding",)


def linear_orientation(m, call) -> bool | None:
    """False: computes x @ W.T (+ b); True: x @ W (+ b) (Conv1D); None: neither (quantised, scaled, ...)."""
    import torch

    if call is None or call.inp is None or call.out is None:
        return None
    w, b = m.weight.detach().float(), getattr(m, "bias", None)
    x = call.inp.float()
    for transposed, mat in ((False, w.T), (True, w)):
        if x.shape[-1] != mat.shape[0]:
            continue
        y = x @ mat
        if isinstance(b, torch.Tensor):
            y = y + b.detach().float()
        if same(y, call.out):
            return transposed
    return None


def is_norm(m) -> bool:
    """A module with only 1-D parameters whose output is unchanged when its input is scaled by 3."""
    import torch

    params = list(m.parameters(recurse=False))
    if not params or any(p.dim() != 1 for p in params) or list(m.children()):
        return False
    w = params[0]
    x = torch.randn(3, w.shape[0], generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            a, b = m(x), m(3 * x)
    except Exception:  # noqa: BLE001 - a module that cannot run alone is not a norm we can vouch for
        return False
    return isinstance(a, torch.Tensor) and a.shape == x.shape and same(a, b) and not same(a, x)


def norm_offset(m) -> float | None:
    """0.0 if a zero weight silences the norm, 1.0 if weight -1 does (Gemma's (1 + w)); None otherwise."""
    import torch

    x = torch.randn(3, m.weight.shape[0], generator=torch.Generator().manual_seed(3))
    for offset in (0.0, 1.0):
        c = copy.deepcopy(m)
        with torch.no_grad():
            for n, p in c.named_parameters():
                p.fill_(-offset if n == "weight" else 0.0)
            if c(x).abs().max() == 0:
                return offset
    return None


def _acts():
    from transformers.activations import ACT2FN

    out = []
    for k in ACT2FN:
        try:
            out.append(ACT2FN[k])
        except Exception:  # noqa: BLE001 - activations that need arguments are skipped
            continue
    return out


def attention(model, rec: Trace, att, found: Found) -> None:
    """q/k/v (plain or fused), their norms and o of one attention module."""
    mods = dict(model.named_modules())
    under = [n for n in mods if n.startswith(att.module + ".") and n in rec.calls]
    lin = [n for n in under if is_linear(mods[n])]
    norms = [n for n in under if n not in lin and is_norm(mods[n])]
    per_proj: dict[str, dict[str, list[int]]] = {}
    for t in "qkv":
        # q and k are rotated (the identity only at position 0); v is not, so its columns must match everywhere
        # (a projection followed by a convolution over time, Inkling's, is not the values)
        tokens = all_tokens if t == "v" else first_token
        dst = tokens(getattr(att, t), heads_layout=True)
        hits = [
            (n, match_columns(tokens(rec.calls[n].out), dst))
            for n in lin + norms
            if rec.calls[n].out is not None and rec.calls[n].out.dim() >= 2
        ]
        hits = [(n, c) for n, c in hits if c is not None]
        direct = [(n, c) for n, c in hits if n in lin]
        if len(direct) == 1:
            per_proj.setdefault(direct[0][0], {})[t] = direct[0][1]
        elif not direct and len(hits) == 1 and t in "qk":
            norm = hits[0][0]
            inp = rec.calls[norm].inp
            if inp is not None and inp.dim() == 4 and inp.shape[2] == SEQ and inp.shape[1] != SEQ:
                inp = inp.transpose(1, 2)  # (batch, heads, seq, dim) back to the projection's (batch, seq, heads, dim)
            src = [n for n in lin if same(rec.calls[n].out, inp)]
            if len(src) == 1:
                found.roles[norm] = f"attn.{t}_norm"
                per_proj.setdefault(src[0], {})[t] = hits[0][1]
    for proj, parts in per_proj.items():
        width = rec.calls[proj].out.shape[-1]
        if len(parts) == 1:
            ((t, cols),) = parts.items()
            if cols == list(range(width)):
                found.roles[proj] = f"attn.{t}"
        elif set(parts) == set("qkv") and sorted(c for cols in parts.values() for c in cols) == list(range(width)):
            found.fused[proj] = ("attn.qkv", {f"attn.{t}": parts[t] for t in "qkv"})
    outs = [n for n in lin if same(rec.calls[n].inp, att.out)]
    if len(outs) == 1:
        found.roles[outs[0]] = "attn.o"


def dense_mlp(model, rec: Trace, block: str, prefix: str = "mlp.") -> dict[str, object] | None:
    """gate/up/down of a dense MLP module (``down(act(gate x) * up x)`` or ``down(act(up x))``), fused gate_up too."""
    mods = dict(model.named_modules())
    call = rec.calls.get(block)
    if call is None:
        return None
    lin = [n for n in mods if n.startswith(block + ".") and n in rec.calls and is_linear(mods[n])]
    downs = [n for n in lin if same(rec.calls[n].out, call.out)]
    if len(downs) != 1:
        return None
    down = downs[0]
    d_in = rec.calls[down].inp
    ins = [n for n in lin if n != down and same(rec.calls[n].inp, call.inp)]
    acts = _acts()
    if len(ins) == 2:
        for g, u in (ins, ins[::-1]):
            yg, yu = rec.calls[g].out, rec.calls[u].out
            if yg.shape == yu.shape and any(same(a(yg) * yu, d_in) for a in acts):
                return {g: prefix + "gate", u: prefix + "up", down: prefix + "down"}
        return None
    if len(ins) != 1:
        return None
    y = rec.calls[ins[0]].out
    if any(same(a(y), d_in) for a in acts):
        return {ins[0]: prefix + "up", down: prefix + "down"}
    h = y.shape[-1] // 2
    for gate, up in ((slice(0, h), slice(h, 2 * h)), (slice(h, 2 * h), slice(0, h))):
        if y.shape[-1] == 2 * h and any(same(a(y[..., gate]) * y[..., up], d_in) for a in acts):
            parts = {prefix + "gate": list(range(2 * h))[gate], prefix + "up": list(range(2 * h))[up]}
            return {ins[0]: (prefix + "gate_up", parts), down: prefix + "down"}
    return None


def add_mlp(found: Found, roles: dict) -> None:
    for n, r in roles.items():
        if isinstance(r, tuple):
            found.fused[n] = r
        else:
            found.roles[n] = r


def moe(model, rec: Trace, block: str, found: Found) -> bool:
    """Router, shared expert (and its gate) and the routed experts' 3-D parameters of one MoE block."""
    mods = dict(model.named_modules())
    call = rec.calls.get(block)
    experts = [
        n
        for n, m in mods.items()
        if n.startswith(block + ".") and any(p.dim() == 3 for p in m.parameters(recurse=False))
    ]
    if call is None or len(experts) != 1:
        return False
    ex = experts[0]
    n_exp = next(p for p in mods[ex].parameters(recurse=False) if p.dim() == 3).shape[0]
    hidden = call.inp.shape[-1]
    others = [n for n in mods if n.startswith(block + ".") and n != ex and not n.startswith(ex + ".")]
    routers = [
        n
        for n in others
        if is_linear(mods[n])
        and tuple(mods[n].weight.shape) == (n_exp, hidden)
        and n.count(".") == block.count(".") + 1
    ]
    if len(routers) == 1:
        found.roles[routers[0]] = "mlp.router"
    for child in [n for n in others if n.count(".") == block.count(".") + 1 and n not in routers]:
        if child in rec.calls and same(rec.calls[child].inp, call.inp):
            shared = dense_mlp(model, rec, child, "mlp.shared.")
            if shared:
                add_mlp(found, shared)
            elif is_linear(mods[child]) and mods[child].weight.shape[0] == 1:
                found.roles[child] = "mlp.shared.router"
    for pname, p in mods[ex].named_parameters(recurse=False):
        if p.dim() == 3:
            found.expert_params[f"{ex}.{pname}"] = ex
    found.routed[block] = ex
    found.block_inputs[block] = call.inp
    return True


def layer(model, rec: Trace, prefix: str, found: Found) -> None:
    """Every role of decoder layer ``prefix`` (``model.layers.3``)."""
    mods = dict(model.named_modules())
    atts = [a for name, a in rec.attention.items() if name.startswith(prefix + ".")]
    att = atts[0] if len(atts) == 1 else None
    if att is not None:
        attention(model, rec, att, found)
    children = [n for n in mods if n.startswith(prefix + ".") and n.count(".") == prefix.count(".") + 1]
    mlp = None
    for c in children:
        if att is not None and (att.module == c or att.module.startswith(c + ".")) or c not in rec.calls:
            continue
        if not list(mods[c].parameters()) or is_norm(mods[c]):
            continue
        roles = dense_mlp(model, rec, c)
        if roles:
            add_mlp(found, roles)
            mlp = c
        elif moe(model, rec, c, found):
            mlp = c
        if mlp:
            break
    a_call = rec.calls.get(att.module) if att else None
    m_call = rec.calls.get(mlp) if mlp else None
    for c in children:
        if c not in rec.calls or not is_norm(mods[c]):
            continue
        n = rec.calls[c]
        where = []
        if a_call is not None:
            where += ["norm.pre_attn"] * same(n.out, a_call.inp) + ["norm.post_attn"] * same(n.inp, a_call.out)
        if m_call is not None:
            where += ["norm.pre_mlp"] * same(n.out, m_call.inp) + ["norm.post_mlp"] * same(n.inp, m_call.out)
        if len(where) == 1:
            found.roles[c] = where[0]
            block = {"norm.pre_attn": att.module if att else None, "norm.pre_mlp": mlp}.get(where[0])
            if block:
                found.feeds[c] = block


def feeds_only(model, rec: Trace, norm: str, block: str, layer: str) -> bool | None:
    """Whether ``norm``'s output reaches ``layer``'s output only through ``block``: a zero norm output and a
    zero block input give the same layer output (False where the residual stream itself is normalised,
    MiniMax's ``residual = norm(x)``; None where the block input cannot be replaced)."""
    import torch

    got, seen = {}, []

    def zero_out(mod, args, out):
        return torch.zeros_like(out) if isinstance(out, torch.Tensor) else None

    def zero_in(mod, args, kwargs):
        if args and isinstance(args[0], torch.Tensor):
            seen.append(1)
            return (torch.zeros_like(args[0]), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            seen.append(1)
            return args, {**kwargs, "hidden_states": torch.zeros_like(kwargs["hidden_states"])}
        return None

    def keep(mod, args, out, name):
        got.setdefault(name, _first_tensor(out))

    for name, patch, pre in (("norm", zero_out, False), ("block", zero_in, True)):
        target = model.get_submodule(block if pre else norm)
        hook = target.register_forward_pre_hook(patch, with_kwargs=True) if pre else target.register_forward_hook(patch)
        hooks = [hook, model.get_submodule(layer).register_forward_hook(lambda m, a, o, name=name: keep(m, a, o, name))]
        try:
            with torch.no_grad():
                model(input_ids=rec.ids, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
    if not seen:
        return None
    return same(got.get("norm"), got.get("block"))
