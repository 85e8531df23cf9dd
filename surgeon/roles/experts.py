"""Routed MoE experts: which on-disk per-expert tensor is gate, up or down, decided by doubling each one.

transformers 5 holds a layer's experts as 3-D parameters and writes them back
as one 2-D tensor per expert and projection (its save-time conversion). Each
on-disk tensor is traced to the slice of the 3-D parameter it came from; then,
in the tiny model's MoE block with any shared expert silenced, doubling a
slice in every expert doubles the block's output for ``up`` and ``down``
(linear in them) but not for ``gate`` (inside the activation). ``down`` is the
one whose rows are the hidden size.
"""

from __future__ import annotations

import copy
import re

from surgeon.roles.trace import _first_tensor, same

COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _origin(p, d):
    """(expert, transposed, rows) such that on-disk tensor ``d`` is ``p[e]`` (or ``p[e].T``) rows ``rows``."""
    for e in range(p.shape[0]):
        for transposed, m in ((False, p[e]), (True, p[e].T)):
            if m.shape[1:] != d.shape[1:] or m.shape[0] < d.shape[0]:
                continue
            for start in range(0, m.shape[0] - d.shape[0] + 1, d.shape[0]):
                if same(m[start : start + d.shape[0]], d) and m[start : start + d.shape[0]].shape == d.shape:
                    return e, transposed, (start, start + d.shape[0])
    return None


def _doubles(model, block: str, x, found, pname: str, transposed: bool, rows: tuple[int, int]) -> bool:
    import torch

    mod = copy.deepcopy(model.get_submodule(block))
    with torch.no_grad():
        for n, r in found.roles.items():
            if n.startswith(block + ".") and r == "mlp.shared.down":
                sub = mod.get_submodule(n[len(block) + 1 :])
                for p in sub.parameters():
                    p.zero_()
        ref = _first_tensor(mod(x))
        p = mod.get_parameter(pname)
        sl = (slice(None), slice(None), slice(*rows)) if transposed else (slice(None), slice(*rows))
        p[sl] *= 2
        out = _first_tensor(mod(x))
    return ref is not None and float(ref.abs().max()) > 0 and same(out, 2 * ref)


def experts(config, model, found, disk, layers, small_cfg, skeleton) -> dict | None:
    """The table's ``experts`` entry ({module, count, roles}) or None when any part is unsettled."""
    if not found.routed:
        return None
    block, ex = next(iter(found.routed.items()))
    x = found.block_inputs.get(block)
    if x is None:
        return None
    kinds = {}
    for pname in [p for p, e in found.expert_params.items() if e == ex]:
        p = model.get_parameter(pname).detach()
        for dname, d in disk.get(pname, []):
            o = _origin(p, d)
            if o is None or d.dim() != 2:
                return None
            e, transposed, rows = o
            kinds.setdefault((pname[len(ex) + 1 :], transposed, rows), []).append((e, dname, tuple(d.shape)))
    if not kinds:
        return None
    hidden = x.shape[-1]
    roles, template = {}, None
    for (pname, transposed, rows), items in kinds.items():
        items.sort()
        if len(items) < 2 or items[0][0] != 0:
            return None
        a, b = items[0][1].split("."), items[1][1].split(".")
        diff = [i for i, (s, t) in enumerate(zip(a, b)) if s != t]
        if len(a) != len(b) or len(diff) != 1 or a[-1] != "weight":
            return None
        k = diff[0]
        module = ".".join(a[:k]) + ".{expert}"
        template = template or module
        if module != template:
            return None
        doubles = _doubles(model, block, x, found, f"{ex}.{pname}"[len(block) + 1 :], transposed, rows)
        role = ("mlp.down" if items[0][2][0] == hidden else "mlp.up") if doubles else "mlp.gate"
        if role in roles:
            return None
        roles[role] = ".".join(a[k + 1 : -1])
    if "mlp.down" not in roles or "mlp.up" not in roles:
        return None
    n_small = model.get_parameter(next(iter(found.expert_params))).shape[0]
    n_full = skeleton.get_parameter(next(iter(found.expert_params))).shape[0]
    count = next((c for c in COUNTS if small_cfg.get(c) == n_small and config.get(c) == n_full), None)
    if count is None:
        return None
    m = re.match(re.escape(layers) + r"\.\d+\.", template)
    if m is None:
        return None
    return {"module": template[m.end() :], "count": count, "roles": roles}
