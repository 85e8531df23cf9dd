"""A staged value's checks (finite, representable in the stored dtype, not sharing the caller's memory), and
staged values that are computed when read (:class:`Deferred`).

:meth:`surgeon.io.checkpoint.Checkpoint.set` and ``set_rows`` cast every value
through :func:`cast_checked`, so an edit that overflows fp16 fails naming the
tensor instead of writing inf into the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from surgeon.errors import EditError
from surgeon.io.shards import dtype_code

if TYPE_CHECKING:
    import torch


class Deferred:
    """A staged value whose bytes are made on each read: its stored shape and dtype now, ``make()`` later.

    :meth:`surgeon.io.checkpoint.Checkpoint.defer` stages one per tensor (the
    fine-tune: base read from the input + delta read from its file), so a
    checkpoint with hundreds of trained tensors holds none of them: every
    reader (``ck[key]``, ``ck.stored``, the manifest's hash, the writer)
    makes the value, uses it and drops it, one tensor at a time.
    """

    __slots__ = ("shape", "dtype", "make")

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, make: Callable[[], torch.Tensor]):
        self.shape, self.dtype, self.make = tuple(shape), dtype, make

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def materialize(self) -> torch.Tensor:
        """The value (stored dtype and orientation), made now; checked against the shape and dtype it promised."""
        t = self.make()
        if tuple(t.shape) != self.shape or t.dtype != self.dtype:
            raise EditError(f"a deferred value promised {self.shape} {dtype_code(self.dtype)} "
                            f"and made {tuple(t.shape)} {dtype_code(t.dtype)}")
        return t


def materialize(value):
    """A staged value as a tensor: a :class:`Deferred` made now, a tensor as it is."""
    return value.materialize() if isinstance(value, Deferred) else value


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors share memory (so changing one in place changes the other)."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def cast_checked(value: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    """``value`` in the stored dtype, refusing NaN/Inf and values the dtype cannot hold.

    One ``aminmax`` pass (NaN and Inf propagate into it; no mask is allocated)
    decides; the exact counts are computed only when something is wrong.
    """
    import torch

    if not value.is_floating_point():
        if value.dtype == dtype:
            return value
        raise EditError(f"{what}: value of dtype {value.dtype} cannot be cast to {dtype}")
    if not dtype.is_floating_point:
        raise EditError(f"{what}: stored as {dtype_code(dtype)}; surgeon edits floating-point tensors only")
    lo, hi = value_range(value)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        nan = int(torch.isnan(value).sum())
        kind, count = ("NaN", nan) if nan else ("Inf", int(torch.isinf(value).sum()))
        raise EditError(f"{what}: edit produced {kind} in {count} of {value.numel()} values")
    fi = torch.finfo(dtype)
    # IEEE rounding sends |x| >= max + half an ulp to inf (float8 without inf would clip it silently)
    overflow_at = fi.max + math.ldexp(fi.eps / 2, math.frexp(fi.max)[1] - 1)
    if max(-lo, hi) >= overflow_at:
        raise EditError(f"{what}: value {max(-lo, hi):.4g} overflows {dtype_code(dtype)} (max {fi.max:.4g}) on cast")
    return value.to(dtype)


def value_range(value: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a float tensor; NaN if it holds a NaN."""
    import torch

    if value.numel() == 0:
        return 0.0, 0.0
    try:
        lo, hi = torch.aminmax(value)
    except (RuntimeError, NotImplementedError):  # dtypes without aminmax (float8): through float32
        lo, hi = torch.aminmax(value.float())
    return float(lo), float(hi)
