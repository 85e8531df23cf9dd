"""Row-range edits of one stored tensor, kept as patches instead of a whole copy.

A 128k × 8k embedding is 2.1 GB in bf16 and 4.2 GB as float32; an edit that
changes a few hundred rows (new vocabulary, per-token directions) should not
hold it. :class:`RowPatches` records which rows of a tensor changed (and rows
appended past its end) as small tensors in the stored dtype; everything else
stays in the input file. Readers overlay the patches on rows read from the file
(:func:`surgeon.io.shards.read_rows`); the writer walks :meth:`RowPatches.segments`,
copying unchanged row ranges with the kernel and writing the patches' bytes,
so saving never builds the whole tensor either.

"Row" is the first dimension of the tensor as stored (a vocabulary entry of an
embedding or head, one element of a bias).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING

from surgeon.errors import HeaderError
from surgeon.io.shards import ITEMSIZE, TensorEntry, copy_range, read_rows, tensor_bytes

if TYPE_CHECKING:
    import torch

_HASH_CHUNK = 8 * 1024 * 1024


def rows_on_disk(view, stored_shape: tuple[int, ...]) -> int | None:
    """The stored row where row 0 of a role ``view`` is, or None if its rows are not contiguous on disk
    (a Conv1D weight stored (in, out), a part interleaved per head)."""
    if view.transposed and len(stored_shape) == 2:
        return None
    if view.rows is None:
        return 0
    return view.rows.start if isinstance(view.rows, range) and view.rows.step == 1 else None


@dataclass
class RowPatches:
    """Staged rows of the stored tensor ``entry``: ``patches`` maps a start row to the rows from there.

    Patches never overlap (a later :meth:`put` trims earlier ones) and cover
    every row from ``entry.shape[0]`` to ``rows`` (appended rows must be
    contiguous with the existing ones), so the tensor is fully defined.
    """

    entry: TensorEntry
    rows: int = -1  # row count after the edits; > entry.shape[0] when rows were appended
    patches: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.rows < 0:
            self.rows = self.entry.shape[0]

    # ------------------------------------------------------------- shape

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, *self.entry.shape[1:])

    @property
    def dtype(self):
        return self.entry.torch_dtype

    @property
    def row_bytes(self) -> int:
        return prod(self.entry.shape[1:]) * ITEMSIZE[self.entry.dtype]

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    @property
    def grown(self) -> bool:
        """Rows were appended: the tensor's byte range (and its shard's layout) changes."""
        return self.rows != self.entry.shape[0]

    # ------------------------------------------------------------- edits

    def put(self, start: int, value: torch.Tensor) -> None:
        """Stage ``value`` (stored dtype, shape (n, *row)) as rows ``start .. start + n``."""
        stop = start + value.shape[0]
        if not 0 <= start <= self.rows:
            raise IndexError(f"row {start} is beyond the {self.rows} rows (appended rows must follow the last one)")
        kept = {}
        for s, t in self.patches.items():
            e = s + t.shape[0]
            if e <= start or s >= stop:
                kept[s] = t
                continue
            if s < start:
                kept[s] = t[: start - s]
            if e > stop:
                kept[stop] = t[stop - s :]
        kept[start] = value
        self.patches = dict(sorted(kept.items()))
        self.rows = max(self.rows, stop)

    def ranges(self) -> list[list[int]]:
        """[start, stop) of each staged row range, in order (for the manifest)."""
        return [[s, s + t.shape[0]] for s, t in self.patches.items()]

    # ------------------------------------------------------------- reads

    def read(self, path, a: int, b: int) -> torch.Tensor:
        """Rows ``a .. b`` (stored dtype): the input's rows with the patches laid over them."""
        import torch

        n_in = self.entry.shape[0]
        base = read_rows(path, self.entry, a, min(b, n_in)) if a < n_in else None
        out = torch.empty((b - a, *self.entry.shape[1:]), dtype=self.dtype)
        if base is not None:
            out[: base.shape[0]] = base
        for s, t in self.patches.items():
            lo, hi = max(a, s), min(b, s + t.shape[0])
            if lo < hi:
                out[lo - a : hi - a] = t[lo - s : hi - s]
        return out

    def materialize(self, path) -> torch.Tensor:
        """The whole tensor (for callers that need it all: diff, the runtime's sync)."""
        return self.read(path, 0, self.rows)

    # ------------------------------------------------------------- bytes

    def segments(self):
        """The tensor's bytes in order: ("file", absolute offset, nbytes) or ("data", memoryview)."""
        pos = 0
        for s, t in self.patches.items():
            if s > pos:
                yield "file", self.entry.start + pos * self.row_bytes, (s - pos) * self.row_bytes
            yield "data", tensor_bytes(t)
            pos = s + t.shape[0]
        if pos < self.rows:
            yield "file", self.entry.start + pos * self.row_bytes, (self.rows - pos) * self.row_bytes

    def writes(self):
        """(absolute offset, bytes) of each patch inside the input's byte range (only when not grown)."""
        return [(self.entry.start + s * self.row_bytes, tensor_bytes(t)) for s, t in self.patches.items()]

    def write_to(self, fi, fo) -> None:
        """Append the tensor's bytes to ``fo``: unchanged rows copied from ``fi`` by the kernel."""
        for kind, *rest in self.segments():
            if kind == "file":
                copy_range(fi, fo, rest[0], rest[1])
            else:
                fo.write(rest[0])

    def sha256(self, path) -> str:
        """sha256 of the tensor's bytes after the edits, streamed (for the manifest)."""
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for kind, *rest in self.segments():
                if kind == "data":
                    h.update(rest[0])
                    continue
                f.seek(rest[0])
                left = rest[1]
                while left:
                    chunk = f.read(min(_HASH_CHUNK, left))
                    if not chunk:
                        raise HeaderError(f"{path}: ended early while hashing {self.entry.name!r}")
                    h.update(chunk)
                    left -= len(chunk)
        return h.hexdigest()
