"""How two checkpoints differ, tensor by tensor and role by role.

For each tensor: the Frobenius norm of the change, the change relative to the
original, the rank of the change, and rows added (vocabulary growth). A
rank-one edit (ROME) shows rank 1 on exactly one tensor; a fine-tune shows
dense changes spread over the layers it touched.
"""

from __future__ import annotations

import torch

# Singular values below this fraction of the largest are rounding noise: a rank-one
# edit cast to bf16 leaves a full-rank residue at ~2**-8 of the weights' scale.
RANK_TOL = 1e-2


def delta_stats(old: torch.Tensor | None, new: torch.Tensor) -> dict:
    """Norms and rank of ``new - old`` (float32, (out, in) orientation); ``old`` None for an added tensor."""
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
    d = new - old
    dn, on = float(d.norm()), float(old.norm())
    return {
        "shape": list(new.shape) if not rows_added else [new.shape[0] + rows_added, *new.shape[1:]],
        "norm": on,
        "delta_norm": dn,
        "relative": dn / on if on else None,
        "rank": effective_rank(d),
        "rows_added": rows_added,
    }


def effective_rank(d: torch.Tensor, tol: float = RANK_TOL) -> int:
    """Number of singular values above ``tol`` × the largest (0 for no change, vectors count as 1)."""
    if d.numel() == 0 or not torch.any(d):
        return 0
    if d.dim() < 2:
        return 1
    s = torch.linalg.svdvals(d.reshape(d.shape[0], -1))
    return int((s > tol * s[0]).sum())
