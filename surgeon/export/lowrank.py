"""The best low-rank factors of a weight change, sized by the rounding the stored tensor already carries."""

from __future__ import annotations

import math

import torch


def factor(delta: torch.Tensor, row, rounding: float, rank, tol):
    """Best rank-r ΔW ≈ B A (Eckart–Young), B (out, r), A (r, in); fills rank/residual/rounding into ``row``.

    ``rounding``: the storage rounding of the edited tensor (absolute); by default the rank is the
    smallest that leaves no more than twice that; ``rank`` caps it; ``tol`` asks for a relative residual.

    The top singular subspace comes from a randomized SVD (Halko et al. 2011,
    ``torch.svd_lowrank``, 3 power iterations, fixed seed), grown
    ×4 until the rank rule is met; past a quarter of the full rank, from the
    eigen-decomposition of the smaller Gram matrix instead. B = U_r and
    A = U_rᵀ ΔW, so BA is ΔW projected on that subspace and the reported
    residual √(‖ΔW‖² − ‖A‖²) is exactly what the written factors leave.
    """
    d = delta.double()
    total2 = float(d.pow(2).sum())
    total = math.sqrt(total2)
    r, full, basis = _subspace(d, total2, rounding, rank, tol)
    if full and d.shape[0] > d.shape[1]:  # tall: the right singular vectors
        v, _ = torch.linalg.qr(basis[:, :r])
        b, a = d @ v, v.T
        kept = float(b.pow(2).sum())
    else:
        u, _ = torch.linalg.qr(basis[:, :r])  # orthonormal, so the residual below is exact
        b, a = u, u.T @ d
        kept = float(a.pow(2).sum())
    row.rank = r
    row.delta_norm = total
    row.residual = math.sqrt(max(total2 - kept, 0.0)) / total if total else 0.0
    row.rounding = rounding / total if total else None
    return b.float().contiguous(), a.float().contiguous()


def _subspace(d: torch.Tensor, total2: float, rounding: float, rank, tol) -> tuple[int, bool, torch.Tensor]:
    """(rank r, whether the Gram matrix was decomposed whole, singular vectors whose first r columns span BA).

    The vectors are left singular vectors, except for a tall ΔW decomposed whole: then right ones.
    """
    total = math.sqrt(total2)
    k = min(d.shape)
    # the default rule: the rank where what is left is at the storage rounding — with a floor, since an
    # edit stored exactly (zeroed heads) has rounding 0 and only an exactly-zero tail would match it
    target = tol * total if tol is not None else None if rank is not None else max(2 * rounding, 1e-6 * total)
    q = min(k, max(8, rank or 0))
    # float32 sketches resolve tails down to ~3e-4 of ‖ΔW‖, enough for bf16/fp16 rounding or a tolerance;
    # an fp32-stored edit's rounding floor (~1e-7) needs float64
    work = torch.float32 if target is None or target > 1e-3 * total else torch.float64
    while True:
        full = 4 * q >= k
        if full:
            wide = d.shape[0] <= d.shape[1]
            lam, vec = torch.linalg.eigh(d @ d.T if wide else d.T @ d)
            sig2, vec = lam.flip(0).clamp_min(0), vec.flip(1)  # left (wide) or right (tall) singular vectors
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                vec, sv, _ = torch.svd_lowrank(d.to(work), q=q, niter=3)
            vec, sig2 = vec.double(), sv.double().pow(2)
        tail = (total2 - torch.cat([sig2.new_zeros(1), sig2.cumsum(0)])).clamp_min(0).sqrt()  # estimated ‖ΔW − ΔW_r‖
        hit = (tail <= target).nonzero() if target is not None else tail.new_zeros(0, 1)
        if len(hit):
            r = int(hit[0])
            r = min(r, rank) if rank is not None else r
            break
        if rank is not None and (rank <= len(sig2) or full):
            r = min(rank, len(sig2))
            break
        if full:
            r = len(sig2)
            break
        q *= 4
    return max(1, min(r, k)), full, vec
