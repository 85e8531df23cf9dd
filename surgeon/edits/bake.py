"""Baking a steering direction into the weights (Arditi et al. 2024; Turner et al. 2023).

* :func:`bake_additive` — α·v as a bias on ``attn.o`` or ``mlp.down`` of one layer: the same
  residual addition as run-time :func:`surgeon.edits.steering.steer`, stored in the checkpoint;
* :func:`ablate` — orthogonalise the matrices that write the residual stream against v, so no layer
  can write the direction any more.
"""

from __future__ import annotations

import torch

from surgeon.edits.steering import SITES, _check_layer, _has, _hidden_size, _unit, _vector
from surgeon.errors import EditError

# --------------------------------------------------------------------------- bake: additive


def bias_flags(arch) -> dict[str, tuple[str, ...]]:
    """config flag -> layer roles that gain a bias when it is true (``bias_flags`` of the family's JSON table)."""
    return {flag: tuple(roles) for flag, roles in (arch.bias_flags or {}).items()}


def bake_additive(ck, direction, layer: int | None = None, alpha: float = 1.0, *, site: str = "residual") -> dict:
    """Stage α·v as a bias on ``layers.L.<site>`` (``"mlp.down"`` or ``"attn.o"``).

    ``site="residual"`` means the bias on ``mlp.down`` for families whose MLP
    output enters the residual directly (identical to :func:`steer` with
    ``site="residual"``); it is refused where ``norm.post_mlp`` sits in between.
    An existing bias is added to. Otherwise the family's ``bias_flags`` name
    the config flag that makes transformers build the bias; setting it gives
    *every* layer's listed modules a bias (Llama's ``mlp_bias`` covers gate, up
    and down), so those get zero biases and the model is unchanged elsewhere.
    The bias is stored in the weight's dtype (bf16 rounds it to ~3 digits).
    """
    vec, layer = _vector(direction, layer)
    arch = ck.architecture
    if arch is None:
        raise EditError(f"{ck.path}: unknown architecture; cannot place a bias by role")
    _check_layer(ck, layer)
    if vec.numel() != _hidden_size(ck):
        raise EditError(f"steering vector has {vec.numel()} dims; {ck.path} has hidden size {_hidden_size(ck)}")
    role = _bias_role(ck, arch, layer, site)
    weight = f"layers.{layer}.{role}"
    key = weight + ".bias"
    value = alpha * vec
    done = {"key": key, "layer": layer, "site": site, "alpha": alpha, "norm": float(value.norm()),
            "flag": None, "zero_biases": 0}
    if _has(ck, key):
        ck[key] = ck[key] + value
    else:
        done["flag"], done["zero_biases"] = _add_bias(ck, arch, role, weight, value)
    ck.record("steering.additive", **done)
    return done


def _bias_role(ck, arch, layer: int, site: str) -> str:
    """The module whose bias carries a residual addition at ``site`` (refusing families where none can)."""
    role = site
    if site == "residual":
        if "norm.post_mlp" in arch.roles:
            ok = [r for r in ("attn.o", "mlp.down") if _has(ck, f"layers.{layer}.{r}.bias")
                  or any(r in roles for roles in bias_flags(arch).values())]
            hint = (f"bake site={' or '.join(repr(r) for r in ok)} and try it with steer(..., site=<same>)" if ok
                    else f"{arch.name} has no config flag for a bias on attn.o or mlp.down, so use ablation instead")
            raise EditError(
                f"layers.{layer}.mlp.down: in {arch.name} the MLP output is normalised by norm.post_mlp before the "
                f"residual add, so no bias reproduces a residual addition; {hint}")
        role = "mlp.down"
    if role not in ("attn.o", "mlp.down"):
        raise EditError(f"site {site!r}: choose one of {', '.join(SITES)}")
    weight = f"layers.{layer}.{role}"
    if not _has(ck, weight):
        raise EditError(f"{weight}: no such tensor in this {arch.name} checkpoint "
                        "(MoE layers have per-expert mlp.down)")
    return role


def _add_bias(ck, arch, role: str, weight: str, value: torch.Tensor) -> tuple[str, int]:
    """Turn on the config flag that gives ``role`` a bias: ``value`` on ``weight``, zeros on every other
    module the flag covers. Returns (flag, zero biases added)."""
    key = weight + ".bias"
    flag = next((f for f, roles in bias_flags(arch).items() if role in roles), None)
    if flag is None:
        raise EditError(
            f"{key}: {arch.name} checkpoints cannot carry a bias on {role}: transformers has no config flag that "
            f"adds one (bias_flags in surgeon/roles/architectures/{arch.name}.json)")
    if arch.settings(ck.config).get(flag):
        raise EditError(f"{key}: config {flag} is already true but the tensor is missing; "
                        "the checkpoint is inconsistent")
    arch.own_config(ck.config)[flag] = True  # a wrapper's text flags live in its text sub-config
    zeros = 0
    for i in range(ck.num_layers):
        for r in bias_flags(arch)[flag]:
            w = f"layers.{i}.{r}"
            if not _has(ck, w) or _has(ck, f"{w}.bias"):
                continue
            if w == weight:
                ck.add(key, value)
            else:
                ck.add(f"{w}.bias", torch.zeros(ck.shape(w)[0]))
                zeros += 1
    return flag, zeros


# --------------------------------------------------------------------------- bake: ablation


def ablate(ck, direction, layers=None, *, embed: bool = False, through_post_norm: bool = True) -> dict:
    """Remove the direction r from everything the chosen layers write into the residual.

    Each matrix writing into the residual (``attn.o``, ``mlp.down``, shared
    and per-expert ``mlp.down``; ``embed`` and ``pos_embed`` if ``embed``)
    becomes W − r rᵀ W (for an embedding, whose rows are residual vectors,
    E − E r rᵀ), and a bias b becomes b − r rᵀ b. Where a block's output is
    normalised before the residual add (``norm.post_attn``/``norm.post_mlp``,
    gain g), the block is made orthogonal to g⊙r instead, which makes the
    *normalised* output orthogonal to r. ``through_post_norm=False``
    orthogonalises against r itself, as tools written for pre-norm models do;
    then the norm's gain turns part of the output back towards r (Gemma-3-270M,
    gains up to ~700, a mood direction at layer 8: that layer's write along r
    goes from 0.49 of its norm to 0.46 naively, to 2e-4 exactly). With tied
    embeddings ``embed=True`` also stops the head reading r. ``layers``: None for all.
    """
    r = _unit(direction)
    arch = ck.architecture
    if arch is None:
        raise EditError(f"{ck.path}: unknown architecture; cannot find the residual writers by role")
    if r.numel() != _hidden_size(ck):
        raise EditError(f"direction has {r.numel()} dims; {ck.path} has hidden size {_hidden_size(ck)}")
    layers = list(range(ck.num_layers)) if layers is None else sorted(set(int(x) for x in layers))
    for layer in layers:
        _check_layer(ck, layer)
    edited = []
    for layer in layers:
        for block, writers in (("attn", ("attn.o",)), ("mlp", ("mlp.down", "mlp.shared.down"))):
            post = f"layers.{layer}.norm.post_{block}"
            rr = _unit(_norm_gain(ck, post) * r) if through_post_norm and _has(ck, post) else r
            keys = [f"layers.{layer}.{w}" for w in writers]
            if block == "mlp":
                keys += sorted(k for k in ck.roles.by_key
                               if k.startswith(f"layers.{layer}.experts.") and k.endswith(".mlp.down"))
            for key in keys:
                if not _has(ck, key):
                    continue
                w = ck[key]  # (out = hidden, in)
                ck[key] = w - torch.outer(rr, rr @ w)
                edited.append(key)
                if _has(ck, f"{key}.bias"):
                    b = ck[f"{key}.bias"]
                    ck[f"{key}.bias"] = b - rr * (rr @ b)
                    edited.append(f"{key}.bias")
    if embed:
        for key in ("embed", "pos_embed"):
            if _has(ck, key):
                e = ck[key]  # (rows, hidden)
                ck[key] = e - torch.outer(e @ r, r)
                edited.append(key)
    if not edited:
        raise EditError(f"layers {layers}: no attn.o / mlp.down found to ablate in this {arch.name} checkpoint")
    done = {"layers": layers, "embed": embed, "tensors": edited, "tied_head": bool(embed and ck.tied),
            "through_post_norm": through_post_norm}
    ck.record("steering.ablate", **done)
    return done


def _norm_gain(ck, key: str) -> torch.Tensor:
    """The factor a norm really applies: Gemma stores weight - 1 (architecture table's norm_offset)."""
    return ck[key] + ck.architecture.norm_offset
