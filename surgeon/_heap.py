"""Handing freed heap pages back to the system (glibc's ``malloc_trim``).

glibc serves large-but-not-huge blocks from its heap and keeps the pages after they are freed, so a
process that drops a model (or FSDP's per-layer all-gather buffers) keeps its RSS. Where the C library
has no ``malloc_trim`` (musl, macOS, Windows) :func:`trimmer` returns None and nothing is trimmed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def trimmer() -> Callable[[], int] | None:
    """``malloc_trim(0)`` as a function (it returns 1 when memory was released), or None without glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None
    fn = getattr(libc, "malloc_trim", None)
    return (lambda: fn(0)) if fn is not None else None
