"""Gradient attribution: per tensor ``sum |grad ⊙ W|`` of the task loss, grouped by layer × role.

The first-order estimate of how much the loss would move if a tensor were
switched off (Molchanov et al. 2019, "Importance Estimation for Neural Network
Pruning"; "attribution patching", Nanda 2023). Every parameter is counted
exactly once: a tied head is the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgeon.errors import SurgeonError
from surgeon.roles import LAYER_ROLES
from surgeon.study.locate.probes import LocateError, ids, probes
from surgeon.study.task import Task


@dataclass
class Attribution:
    roles: list[str]  # the columns of ``grid``
    grid: list[list[float]]  # layers × roles
    top: dict[str, float]  # embed, lm_head, final_norm: outside the layers
    total: float  # over every parameter


def _column(ref) -> str:
    """The heatmap column of a layer tensor: its role, ``ROLE.bias`` for biases, ``experts`` for MoE experts."""
    if ref.expert is not None:
        return "experts"
    return ref.role if ref.param == "weight" else f"{ref.role}.{ref.param}"


def role_params(rt) -> tuple[dict[int, tuple[int | None, str]], list[str]]:
    """id(parameter) -> (layer or None, role column), through the role table and the runtime's addressing."""
    where: dict[int, tuple[int | None, str]] = {}
    roles: list[str] = []
    for key, ref in rt.ck.roles.by_key.items():
        if ref.view.rows is not None:  # a part of a fused tensor: the whole is counted under its own key
            continue
        try:
            mod = rt.module(key)
        except (KeyError, SurgeonError):
            continue
        param = getattr(mod, ref.param, None)
        if not isinstance(param, torch.nn.Parameter) or id(param) in where:
            continue  # a tied lm_head is the embedding, already counted
        col = ref.role if ref.layer is None else _column(ref)
        if ref.layer is not None and col not in roles:
            roles.append(col)
        where[id(param)] = (ref.layer, col)
    order = {r: i for i, r in enumerate(LAYER_ROLES)}
    roles.sort(key=lambda r: (order.get(r.split(".bias")[0], 99), r))
    return where, roles


def _backward(rt, task: Task, n: int) -> None:
    """Accumulate the gradient of the mean NLL of the probes' targets (teacher-forced) into ``.grad``."""
    ps = probes(task, n)
    with torch.enable_grad():
        for pr in ps:
            ids_p = ids(rt, pr.prompt)
            ids_c = ids(rt, pr.target, special=False)
            if not ids_c:
                continue
            x = torch.tensor([ids_p + ids_c], device=rt.device)
            logits = rt.logits(x, keep=len(ids_c) + 1)[0, :-1].float()  # the positions that predict the target
            nll = torch.nn.functional.cross_entropy(logits, x[0, len(ids_p):], reduction="sum")
            (nll / len(ps)).backward()


def _collect(rt, where, roles) -> Attribution:
    """|grad ⊙ W| per parameter, into the layers × roles grid or the top-level roles."""
    grid = [[0.0] * len(roles) for _ in range(rt.num_layers)]
    col = {r: i for i, r in enumerate(roles)}
    top: dict[str, float] = {}
    total, unclassified, seen = 0.0, [], set()
    for name, p in rt.model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        score = 0.0 if p.grad is None else float((p.grad.float() * p.detach().float()).abs().sum())
        total += score
        if id(p) not in where:
            unclassified.append(name)
            continue
        layer, role = where[id(p)]
        if layer is None:
            top[role] = top.get(role, 0.0) + score
        else:
            grid[layer][col[role]] += score
    if unclassified:
        raise LocateError(f"{len(unclassified)} parameter(s) have no role, e.g. {unclassified[0]}; "
                          "the role table does not cover this model")
    return Attribution(roles, grid, top, total)


def gradient(rt, task: Task, n: int) -> Attribution:
    """One backward pass over up to ``n`` probes; the model's ``requires_grad`` flags are restored after."""
    where, roles = role_params(rt)
    params = list(rt.model.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    try:
        _backward(rt, task, n)
        return _collect(rt, where, roles)
    finally:
        for p, r in zip(params, saved):
            p.grad = None
            p.requires_grad_(r)
