"""How two checkpoints differ, tensor by tensor and role by role.

For each tensor: the Frobenius norm of the change, the change relative to the
original, the effective rank of the change, and rows added (vocabulary
growth). A rank-one edit (ROME) shows rank 1 on exactly one tensor; a
fine-tune shows dense changes spread over the layers it touched.

Effective rank counts singular values of ΔW above two cuts: ``RANK_TOL`` × the
largest (components too small to matter), and the *rounding floor* — the
largest singular value that rounding the edited weights to their stored dtype
can produce on its own. A rank-one fp32 update written into bf16 weights
leaves a full-rank residue of rounding error (each entry off by up to half a
bf16 ulp); its singular values stay below max-row-norm + max-column-norm of
the per-entry rounding standard deviation (ulp/√12), the scale of the norm of
a random matrix with independent entries (Bandeira & van Handel 2016). A
relative cut alone cannot tell that residue from signal: it depends on how
large the edit is compared with the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from surgeon.errors import SurgeonError
from surgeon.io.changes import config_changes as _config_changes
from surgeon.io.changes import oriented, same_bytes, significand_bits, tensor_names, whole_ref
from surgeon.io.checkpoint import open_checkpoint
from surgeon.io.shards import dtype_code
from surgeon.roles import LAYER_ROLES, TOP_ROLES

# Singular values below this fraction of the largest do not count.
RANK_TOL = 1e-2
# ... nor those below this many rounding floors. Measured on SmolLM2 bf16 weights (mlp.down, attn.q/k,
# embed) with rank-one updates of relative size 1e-3..1: rounding residue's top singular value is 0.6-1.3
# floors; a second component of 20% of the first is seen from relative size 3e-3 on.
NOISE_MARGIN = 2.0


def grid_dtype(t: torch.Tensor) -> torch.dtype:
    """The coarsest float dtype that holds every value of ``t`` exactly (bf16, fp16, else fp32)."""
    t = t.float()
    for dt in (torch.bfloat16, torch.float16):
        if torch.equal(t.to(dt).float(), t):
            return dt
    return torch.float32


def rounding_floor(weights: torch.Tensor, dtype: torch.dtype | None = None, chunk: int = 8192) -> float:
    """Largest singular value expected from rounding ``weights`` (as stored) to ``dtype`` alone.

    Per entry the rounding error is uniform within ± half an ulp: variance ulp²/12. Computed a chunk
    of rows at a time, so a 262k-row embedding needs no full-size temporaries.
    """
    w = weights.reshape(weights.shape[0], -1) if weights.dim() > 1 else weights.reshape(1, -1)
    p = significand_bits(dtype or grid_dtype(w))
    rows_max = torch.zeros(())
    cols = torch.zeros(w.shape[1], dtype=torch.float64)
    for s in range(0, w.shape[0], chunk):
        part = w[s : s + chunk].float()
        _, exp = torch.frexp(part)
        var = torch.ldexp(torch.full_like(part, 1 / 12), 2 * (exp - p)).masked_fill_(part == 0, 0)  # ulp² / 12
        rows_max = torch.maximum(rows_max, var.sum(1).max())
        cols += var.sum(0, dtype=torch.float64)
    return float(rows_max.sqrt() + cols.max().sqrt())


def effective_rank(d: torch.Tensor, tol: float = RANK_TOL, *, weights: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> int:
    """Singular values of ``d`` above ``tol`` × the largest (0 for no change, vectors count as 1).

    Pass ``weights`` (the edited tensor as stored, any float dtype) to also
    discount rounding to ``dtype`` (default: inferred from ``weights``' values);
    without it, a bf16-stored rank-one edit reads as rank 1 only when it is
    large (relative change ≳ 3% on SmolLM2's matrices). A non-zero change whose
    every singular value is below the rounding floor counts as rank 1.
    """
    if d.numel() == 0 or not torch.any(d):
        return 0
    if d.dim() < 2:
        return 1
    s = torch.linalg.svdvals(d.float().reshape(d.shape[0], -1))
    cut = tol * float(s[0])
    if weights is not None:
        cut = max(cut, NOISE_MARGIN * rounding_floor(weights, dtype))
    return max(1, int((s > cut).sum()))


def delta_stats(old: torch.Tensor | None, new: torch.Tensor, *, dtype: torch.dtype | None = None,
                rank: bool = True) -> dict:
    """Norms and rank of ``new - old`` ((out, in) orientation); ``old`` None for an added tensor.

    ``dtype``: the stored dtype of ``new``, for the rounding floor of the rank
    (default: inferred from ``new``'s values). ``rank=False`` skips the SVD.
    """
    new = new.float()
    if old is None:
        return {"shape": list(new.shape), "norm": float(new.norm()), "delta_norm": float(new.norm()),
                "relative": None, "rank": None, "rows_added": None}
    old = old.float()
    rows_added = 0
    if old.shape != new.shape:
        if old.dim() == new.dim() and old.shape[1:] == new.shape[1:] and new.shape[0] > old.shape[0]:
            rows_added = new.shape[0] - old.shape[0]
            new = new[: old.shape[0]]
        else:
            return {"shape": list(new.shape), "old_shape": list(old.shape), "norm": float(new.norm()),
                    "delta_norm": None, "relative": None, "rank": None, "rows_added": None}
    shape = list(new.shape) if not rows_added else [new.shape[0] + rows_added, *new.shape[1:]]
    on = float(old.norm())
    d = new - old
    del old
    dn = float(d.norm())
    return {
        "shape": shape,
        "norm": on,
        "delta_norm": dn,
        "relative": dn / on if on else None,
        "rank": effective_rank(d, weights=new, dtype=dtype) if rank else None,
        "rows_added": rows_added,
    }


# ----------------------------------------------------------------- checkpoints


@dataclass
class TensorDiff:
    """One tensor of A and/or B. ``relative`` = ‖ΔW‖ / ‖W_A‖ over the rows both have."""

    name: str  # on-disk tensor name
    key: str | None  # role key (whole tensor), None if unclassified
    role: str | None  # role, with ".bias" etc. for other parameters
    layer: int | None
    expert: int | None
    shape_a: list[int] | None
    shape_b: list[int] | None
    dtype_a: str | None
    dtype_b: str | None
    changed: bool
    norm: float | None = None  # ‖W_A‖
    delta_norm: float | None = None
    relative: float | None = None
    rank: int | None = None  # effective rank of ΔW (None: not a matrix change, or skipped)
    rows_added: int = 0
    added_norm: float | None = None  # ‖rows B has beyond A‖ (new tokens), not part of ‖ΔW‖
    only_in: str | None = None  # "a" or "b" for a tensor one side lacks; ``norm`` is then that side's

    def to_dict(self) -> dict:
        return asdict(self)


class DiffError(SurgeonError):
    """Two checkpoints that are not versions of one model."""


def diff(a, b, *, rank: bool = True, progress: bool = False, unrelated: bool = False) -> list[TensorDiff]:
    """Compare checkpoints ``a`` and ``b`` (Checkpoints with their staged changes, or paths).

    Streams: one tensor pair in memory at a time. Tensors are matched by
    on-disk name; records are sorted embed → layers (role order) → head.
    ``rank=False`` skips the SVDs (the slow part for big changed matrices).
    Two checkpoints of different families, or sharing under half their
    tensors, are refused unless ``unrelated`` (a diff of them says nothing).
    """
    a, b = _open(a), _open(b)
    names_a, names_b = tensor_names(a), tensor_names(b)
    in_a, in_b = set(names_a), set(names_b)
    if not unrelated:
        ta, tb = a.config.get("model_type"), b.config.get("model_type")
        shared = len(in_a & in_b) / max(1, min(len(in_a), len(in_b)))
        if ta != tb or shared < 0.5:
            raise DiffError(f"{b.path}: not a version of {a.path} ({ta} with {len(in_a)} tensors vs {tb} with "
                            f"{len(in_b)}, {shared:.0%} of names shared); "
                            "pass unrelated=True / --unrelated to diff anyway")
    names = names_a + [n for n in names_b if n not in in_a]
    it = names
    if progress:
        from tqdm import tqdm

        it = tqdm(names, desc="diff", unit="tensor")
    out = [_record(a, b, name, name in in_a, name in in_b, rank) for name in it]
    out.sort(key=_order)
    return out


def _record(a, b, name: str, in_a: bool, in_b: bool, rank: bool) -> TensorDiff:
    """One tensor's difference; a tensor stored in the very same bytes on both sides is not read."""
    ref = whole_ref(b if in_b else a, name)
    rec = TensorDiff(
        name=name,
        key=ref.key if ref else None,
        role=(ref.role if ref.param == "weight" else f"{ref.role}.{ref.param}") if ref else None,
        layer=ref.layer if ref else None,
        expert=ref.expert if ref else None,
        shape_a=None, shape_b=None, dtype_a=None, dtype_b=None, changed=True,
    )
    if in_a and in_b and same_bytes(b, a, name):  # a hard link: equal without reading
        rec.changed = False
        rec.shape_a = rec.shape_b = list(ref.view.shape(a.entries[name].shape) if ref else a.entries[name].shape)
        rec.dtype_a = rec.dtype_b = a.entries[name].dtype
        return rec
    ta = oriented(a, name) if in_a else None
    tb = oriented(b, name) if in_b else None
    if ta is not None:
        rec.shape_a, rec.dtype_a = list(ta.shape), dtype_code(ta.dtype)
    if tb is not None:
        rec.shape_b, rec.dtype_b = list(tb.shape), dtype_code(tb.dtype)
    if ta is None or tb is None:
        rec.only_in = "a" if tb is None else "b"
        rec.norm = float((ta if tb is None else tb).float().norm())
    elif ta.dtype == tb.dtype and ta.shape == tb.shape and torch.equal(ta, tb):
        rec.changed = False
    else:
        st = delta_stats(ta, tb, dtype=tb.dtype, rank=rank)
        rec.norm, rec.delta_norm, rec.relative = st["norm"], st["delta_norm"], st["relative"]
        rec.rank, rec.rows_added = st["rank"], st["rows_added"] or 0
        if rec.rows_added and ta.dim() == tb.dim() and tb.shape[0] > ta.shape[0]:
            rec.added_norm = float(tb[ta.shape[0]:].float().norm())
    return rec


def config_changes(a, b) -> dict:
    """config.json keys whose values differ: key -> [value in a, value in b]."""
    a, b = _open(a), _open(b)
    return _config_changes(a.config, b.config)


def _open(x):
    return open_checkpoint(x) if isinstance(x, (str, Path)) else x


def _order(r: TensorDiff):
    if r.role is None:
        return (3, 0, 0, 0, r.name)
    base, _, param = split_param(r.role)
    if r.layer is None:
        top = {"embed": 0, "pos_embed": 1, "final_norm": 0, "lm_head": 1}.get(base, 2)
        return (0 if base in ("embed", "pos_embed") else 2, top, 0, 0, r.role)
    idx = LAYER_ROLES.index(base) if base in LAYER_ROLES else len(LAYER_ROLES)
    return (1, r.layer, -1 if r.expert is None else r.expert, idx, param)


def split_param(role: str) -> tuple[str, str, str]:
    """``"attn.o.bias"`` -> ``("attn.o", ".", "bias")``; ``"attn.o"`` -> ``("attn.o", "", "")``."""
    if role in LAYER_ROLES or role in TOP_ROLES:
        return role, "", ""
    head, _, param = role.rpartition(".")
    return (head, ".", param) if head else (role, "", "")
