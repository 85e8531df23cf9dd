"""Tensor algebra on checkpoints: scale, add, interpolate, transplant, zero heads.

Every operation goes through role keys, so fused tensors (GPT-2's ``c_attn``,
NeoX's interleaved ``query_key_value``) and Conv1D orientation are handled by
the role views, and each tensor is read, changed and staged one at a time.
Before anything is staged, shapes and dtypes of the two sides are compared and
a mismatch raises :class:`EditError` naming the tensor.

Selections (``keys``/``layers``) use the role vocabulary: a role key
(``layers.3.mlp.down``, ``embed``), a role name matching every layer
(``mlp.down``, ``attn.o.bias``), and/or a list of layer indices. Nothing
selected means every tensor.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch

from surgeon.errors import EditError, RoleError
from surgeon.io.checkpoint import open_checkpoint

# ------------------------------------------------------------------ selection


def select(ck, keys=None, layers=None) -> list[str]:
    """Role keys of the selected tensors (parts of fused tensors only when named).

    ``keys``: role keys, role names (``"mlp.down"``: every layer's), or raw
    tensor names; ``layers``: restrict to these layer indices. Each stored
    tensor (or part) appears once, in checkpoint order.
    """
    if isinstance(keys, str):
        keys = [keys]
    if isinstance(layers, int):
        layers = [layers]
    layers = None if layers is None else {int(x) for x in layers}
    refs = []
    if keys is None:
        refs = [_whole(ck, name) for name in _names(ck)]
        refs = [r for r in refs if r is not None]
    else:
        by_role = {}
        for r in ck.roles.by_key.values():
            name = r.role if r.param == "weight" else f"{r.role}.{r.param}"
            by_role.setdefault(name, []).append(r)
        for k in keys:
            if k in by_role and not (k in ck.roles.by_key and ck.roles.by_key[k].layer is None):
                refs.extend(by_role[k])
            else:
                refs.append(ck.resolve(k))
    if layers is not None:
        refs = [r for r in refs if r.layer in layers]
    out, whole_done, seen = [], set(), set()
    for r in refs:
        if r.view.rows is None:
            whole_done.add(r.tensor)
    for r in refs:
        ident = (r.tensor, r.key if r.view.rows is not None else None)
        if ident in seen or (r.view.rows is not None and r.tensor in whole_done):
            continue  # a part of a tensor that is selected whole, or the tied head twice
        seen.add(ident)
        out.append(r.key)
    if not out:
        raise EditError(f"selection keys={keys!r} layers={sorted(layers) if layers else layers!r}: matches no tensor")
    return out


def _names(ck) -> list[str]:
    return list(ck.entries) + [n for n in ck.added if n not in ck.entries]


def _whole(ck, name):
    refs = ck.roles.by_tensor.get(name)
    if not refs:
        return None  # unclassified tensors (buffers) are left alone
    return next((r for r in refs if r.view.rows is None), refs[0])


def _open(other):
    if isinstance(other, (str, Path)):
        return open_checkpoint(other)
    return other


def _check_pairs(ck, other, pairs: dict[str, str]) -> None:
    """Shapes and stored dtypes of every (key in ck, key in other) pair, from headers, before any change."""
    for key, okey in pairs.items():
        name = key if okey == key else f"{key} <- {okey}"
        if okey not in other:
            raise EditError(f"{key}: {okey!r} not in {other.path}")
        sa, sb = tuple(ck.shape(key)), tuple(other.shape(okey))
        if sa != sb:
            raise EditError(f"{name}: shape {sa} in {ck.path} but {sb} in {other.path}")
        da, db = ck.dtype(key), other.dtype(okey)
        if da != db:
            raise EditError(f"{name}: dtype {da} in {ck.path} but {db} in {other.path}")


@contextmanager
def _all_or_nothing(ck):
    """Undo this operation's staged tensors if any of them fails (overflow on cast, ...)."""
    saved, rows = dict(ck.staged), dict(ck.patches)  # set() replaces a tensor's row patches, never mutates them
    try:
        yield
    except BaseException:
        ck.staged.clear()
        ck.staged.update(saved)
        ck.patches.clear()
        ck.patches.update(rows)
        raise


def _finite_number(x, what: str) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise EditError(f"{what}: expected a number, got {x!r}") from None
    if not math.isfinite(x):
        raise EditError(f"{what}: must be finite, got {x}")
    return x


# ------------------------------------------------------------------- edits


def scale(ck, keys, factor: float, *, layers=None) -> list[str]:
    """W ← factor · W for each selected tensor."""
    factor = _finite_number(factor, "scale factor")
    sel = select(ck, keys, layers)
    with _all_or_nothing(ck):
        for k in sel:
            ck[k] = ck[k] * factor
    ck.record("scale", keys=sel, factor=factor)
    return sel


def add(ck, keys, delta, *, alpha: float = 1.0, layers=None) -> list[str]:
    """W ← W + alpha · Δ, with Δ a tensor ((out, in) like ``ck[key]``) or another checkpoint's tensor.

    A checkpoint's tensor must match in shape and stored dtype (a task vector
    from a differently stored model is probably a mistake); a tensor delta
    only in shape.
    """
    alpha = _finite_number(alpha, "add alpha")
    sel = select(ck, keys, layers)
    if isinstance(delta, torch.Tensor):
        if len(sel) != 1:
            raise EditError(f"add: a tensor delta needs exactly one key, the selection has {len(sel)}")
        k = sel[0]
        if not delta.is_floating_point():
            raise EditError(f"{k}: delta of dtype {delta.dtype}; expected floating point")
        if tuple(delta.shape) != tuple(ck.shape(k)):
            raise EditError(f"{k}: delta shape {tuple(delta.shape)} does not match {tuple(ck.shape(k))}")
        ck[k] = ck[k] + alpha * delta.float()
        ck.record("add", keys=sel, alpha=alpha, source="tensor", delta_norm=float(delta.float().norm()))
        return sel
    other = _open(delta)
    _check_pairs(ck, other, {k: k for k in sel})
    with _all_or_nothing(ck):
        for k in sel:
            ck[k] = ck[k] + alpha * other[k]
    ck.record("add", keys=sel, alpha=alpha, source=str(other.path))
    return sel


def interpolate(ck, other, t: float, *, keys=None, layers=None) -> list[str]:
    """W ← (1 − t) · W + t · W_other for the selection (all tensors by default).

    t = 0 leaves the tensors untouched and t = 1 stages the other side's
    stored values as they are, so both endpoints are byte-identical to the
    inputs (the float formula would turn -0.0 into +0.0).
    """
    t = _finite_number(t, "interpolate t")
    other = _open(other)
    sel = select(ck, keys, layers)
    _check_pairs(ck, other, {k: k for k in sel})  # even at the endpoints
    with _all_or_nothing(ck):
        for k in sel:
            if t == 1.0:
                ck[k] = other.get(k, dtype=None)
            elif t != 0.0:
                ck[k] = (1.0 - t) * ck[k] + t * other[k]
    ck.record("interpolate", other=str(other.path), t=t, keys=sel)
    return sel


def transplant(ck, donor, *, keys=None, layers=None, from_layer: int | None = None) -> list[str]:
    """Copy tensors from ``donor`` (same shapes and dtypes) byte for byte.

    ``layers=3`` takes all of layer 3 (norms and biases included); with
    ``from_layer=5`` it takes the donor's layer 5 instead. ``keys`` picks
    roles (``"layers.3.mlp"`` is not a role: name ``layers.3.mlp.up`` etc.).
    """
    donor = _open(donor)
    if keys is None and layers is None:
        raise EditError("transplant: name keys and/or layers to take from the donor")
    sel = select(ck, keys, layers)
    if from_layer is not None:
        dst = {r.layer for r in (ck.resolve(k) for k in sel)}
        if len(dst) != 1 or None in dst:
            raise EditError(f"transplant from_layer={from_layer}: the selection must lie in exactly one layer, "
                            f"got {sorted(map(str, dst))}")
        to = dst.pop()
        src_of = {k: k.replace(f"layers.{to}.", f"layers.{int(from_layer)}.", 1) for k in sel}
    else:
        src_of = {k: k for k in sel}
    _check_pairs(ck, donor, src_of)
    with _all_or_nothing(ck):
        for k in sel:
            ck[k] = donor.get(src_of[k], dtype=None)
    ck.record("transplant", donor=str(donor.path), keys=sel, from_layer=from_layer)
    return sel


def zero_heads(ck, layer: int, heads) -> str:
    """Remove attention heads of ``layer`` by zeroing the columns of ``attn.o`` that read them.

    The attention block computes o(z) = W_o [z_1; …; z_H] + b = Σ_h W_o[:, h] z_h + b:
    head h's output z_h reaches the residual stream only through its own
    column block of W_o, with nothing nonlinear in between. Zeroing that block
    removes exactly head h's contribution and nothing else, at every position
    (zeroing q/k/v rows would not: with grouped-query attention k/v are shared
    by several heads). The o bias stays.
    """
    if isinstance(heads, int):
        heads = [heads]
    key = f"layers.{int(layer)}.attn.o"
    try:
        w = ck[key]
    except RoleError:
        raise EditError(f"{key}: no attention output projection in this checkpoint") from None
    cfg = ck.architecture.settings(ck.config) if ck.architecture else ck.config  # a wrapper's: its text config
    n_heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    if not n_heads or w.shape[1] % n_heads:
        raise EditError(f"{key}: cannot split {w.shape[1]} input columns into {n_heads} heads")
    head_dim = w.shape[1] // n_heads
    heads = sorted({int(h) for h in heads})
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad or not heads:
        raise EditError(f"{key}: heads {bad or heads} out of range 0..{n_heads - 1}")
    for h in heads:
        w[:, h * head_dim : (h + 1) * head_dim] = 0
    ck[key] = w
    ck.record("zero_heads", key=key, layer=int(layer), heads=heads, head_dim=head_dim)
    return key
