"""Safetensors shards at the byte level: header parsing, validation, reads.

Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header
length N, N bytes of JSON mapping tensor name -> {dtype, shape, data_offsets},
then the data buffer. We parse the header ourselves (instead of trusting
``safe_open``) because the writer needs each tensor's byte range to patch a
copied shard in place, and because a hostile header must fail with a message
that names the file before anything is mapped or allocated.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from math import prod

from surgeon.errors import HeaderError

# safetensors dtype code -> bytes per element. torch is imported only when a
# tensor is read or written, so header work (inspect, open) starts in ~0.1 s.
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}
_TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def torch_dtype(code: str):
    """The torch dtype of a safetensors dtype code (``"BF16"`` -> ``torch.bfloat16``)."""
    import torch

    return getattr(torch, _TORCH_NAMES[code])


def dtype_code(dtype) -> str:
    """The safetensors code of a torch dtype (``torch.bfloat16`` -> ``"BF16"``); str(dtype) if none."""
    name = str(dtype).removeprefix("torch.")
    return next((c for c, n in _TORCH_NAMES.items() if n == name), str(dtype))


MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its file, dtype code, shape and absolute byte range."""

    name: str
    file: str  # path relative to the checkpoint directory
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of the first byte in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self):
        return torch_dtype(self.dtype)


@dataclass
class ShardHeader:
    """A parsed, validated header: entries in on-disk order plus the metadata."""

    file: str
    header_len: int
    entries: list[TensorEntry]
    metadata: dict[str, str] | None
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _brief(x, limit: int = 80) -> str:
    """repr() cut to ``limit`` characters: a hostile header must not make a megabyte-long error."""
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 5] + "...)"


def read_header(path: str, rel: str) -> ShardHeader:
    """Parse and validate the header of ``path`` (``rel``: its name inside the checkpoint).

    Checks everything a reader relies on: header length within the file,
    JSON object, known dtypes, integer shapes, byte ranges that match the
    shape, do not overlap, leave no gaps and end exactly at the end of file.
    Only integers are compared: a header claiming a 2**60-element tensor
    costs nothing. Errors name ``path``.
    """
    size, n, raw = _read_raw_header(path)
    doc, meta = _parse_header(path, raw)
    data_start = 8 + n
    entries = [_entry(path, rel, name, spec, data_start, size) for name, spec in doc.items()]
    entries.sort(key=lambda t: (t.start, t.end))
    _check_tiling(path, entries, data_start, size)
    return ShardHeader(rel, n, entries, meta, size)


def _read_raw_header(path: str) -> tuple[int, int, bytes]:
    """(file size, header length, header bytes), the length checked against the file before reading."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise HeaderError(f"{path}: truncated: {size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                raise HeaderError(f"{path}: header length {n} exceeds the {MAX_HEADER}-byte limit "
                                  "(corrupt or not safetensors)")
            if 8 + n > size:
                raise HeaderError(f"{path}: truncated: header claims {n} bytes but the file has {size - 8} "
                                  "after the length")
            return size, n, f.read(n)
    except OSError as e:
        raise HeaderError(f"{path}: cannot read: {e.strerror}") from None


def _parse_header(path: str, raw: bytes) -> tuple[dict, dict | None]:
    """The header's JSON object (tensor name -> spec) and its ``__metadata__`` (strings to strings, or None)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise HeaderError(f"{path}: header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise HeaderError(f"{path}: header is not a JSON object")
    meta = doc.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise HeaderError(f"{path}: __metadata__ must map strings to strings")
    return doc, meta


def _entry(path: str, rel: str, name: str, spec, data_start: int, size: int) -> TensorEntry:
    """One tensor's entry: known dtype, integer shape, a byte range inside the file that fits the shape."""
    what = f"{path}: tensor {_brief(name)}"
    if not isinstance(spec, dict):
        raise HeaderError(f"{what}: entry is not an object")
    dtype, shape, offs = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise HeaderError(f"{what}: unknown dtype {_brief(dtype)}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise HeaderError(f"{what}: shape {_brief(shape)} is not a list of non-negative integers")
    if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
        raise HeaderError(f"{what}: data_offsets {_brief(offs)} is not a pair of integers")
    b, e = offs
    if not 0 <= b <= e:
        raise HeaderError(f"{what}: data_offsets {_brief(offs)} are not ordered")
    if e > size - data_start:
        raise HeaderError(
            f"{what}: data ends at byte {data_start + e} but the file has {size} bytes "
            "(truncated, or a corrupt header)"
        )
    want = prod(shape) * ITEMSIZE[dtype]
    if e - b != want:
        raise HeaderError(f"{what}: {e - b} bytes for shape {_brief(shape)} {dtype}, expected {_brief(want)}")
    return TensorEntry(name, rel, dtype, tuple(shape), data_start + b, data_start + e)


def _check_tiling(path: str, entries: list[TensorEntry], data_start: int, size: int) -> None:
    """Sorted byte ranges that neither overlap nor leave gaps, ending exactly at the end of the file."""
    pos, prev = data_start, None
    for t in entries:
        if t.start < pos:
            raise HeaderError(f"{path}: tensor {_brief(t.name)} overlaps tensor {_brief(prev.name)} "
                              f"(bytes {t.start}..{pos})")
        if t.start > pos:
            raise HeaderError(f"{path}: {t.start - pos} bytes before tensor {_brief(t.name)} belong to no tensor")
        pos, prev = t.end, t
    if pos != size:
        raise HeaderError(f"{path}: {size - pos} trailing bytes after the last tensor")


def read_tensor(path: str | os.PathLike, e: TensorEntry):
    """One tensor's bytes read straight into a fresh tensor (no mmap, nothing else of the file).

    ``readinto`` a preallocated buffer, so reading a tensor costs exactly its
    size in memory: mapped pages of a shard would count toward the process's
    resident memory for as long as the mapping lives.
    """
    return _read_span(path, e, e.start, e.nbytes).view(e.torch_dtype).reshape(e.shape)


def read_rows(path: str | os.PathLike, e: TensorEntry, a: int, b: int):
    """Rows ``a .. b`` of tensor ``e`` (first dimension, as stored): only those rows' bytes are read."""
    if not 0 <= a <= b <= (e.shape[0] if e.shape else 0):
        raise HeaderError(f"{path}: rows {a}..{b} outside tensor {_brief(e.name)} of shape {list(e.shape)}")
    row = prod(e.shape[1:]) * ITEMSIZE[e.dtype]
    buf = _read_span(path, e, e.start + a * row, (b - a) * row)
    return buf.view(e.torch_dtype).reshape((b - a, *e.shape[1:]))


def _read_span(path, e: TensorEntry, start: int, nbytes: int):
    """``nbytes`` from ``start`` into a fresh uint8 tensor (``e`` names the tensor in errors)."""
    import torch

    buf = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        view = memoryview(buf.numpy())
        got = 0
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            while got < nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise HeaderError(f"{path}: ended at byte {start + got} inside tensor {_brief(e.name)} "
                                      "(changed or truncated since it was opened?)")
                got += n
    return buf


def sha256_range(path: str, start: int, end: int) -> str:
    """sha256 of a byte range, streamed in chunks (for the manifest's old hashes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def tensor_bytes(t) -> memoryview:
    """The raw little-endian bytes of a tensor, as safetensors stores them."""
    import torch

    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(-1).view(torch.uint8).numpy())


def encode_header(entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict | None) -> bytes:
    """Header bytes (length prefix included) for (name, dtype, shape, nbytes) in data order.

    Padded with spaces to an 8-byte boundary, as safetensors' own writer does,
    so the data buffer stays aligned.
    """
    doc: dict = {}
    if metadata is not None:
        doc["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, nbytes in entries:
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_shard(path: str | os.PathLike, items, metadata: dict | None = None) -> None:
    """Write a safetensors file streaming: the header, then each tensor's bytes in turn.

    ``items``: (name, dtype code, shape, chunks), ``chunks`` an iterable of
    bytes-like pieces (a tensor, or a generator so that one piece at a time is
    in memory). ``safetensors.save_file`` needs every tensor of the file at
    once; this builds multi-GB shards (benchmarks, re-sharding) in bounded memory.
    """
    import torch

    items = list(items)
    layout = [(n, d, tuple(s), prod(s) * ITEMSIZE[d]) for n, d, s, _ in items]
    with open(path, "wb") as f:
        f.write(encode_header(layout, metadata))
        for (name, _, _, nbytes), (_, _, _, chunks) in zip(layout, items, strict=True):
            if isinstance(chunks, torch.Tensor):
                chunks = [tensor_bytes(chunks)]
            done = 0
            for piece in chunks:
                piece = tensor_bytes(piece) if isinstance(piece, torch.Tensor) else piece
                f.write(piece)
                done += memoryview(piece).nbytes
            if done != nbytes:
                raise HeaderError(f"{path}: tensor {name!r}: wrote {done} bytes, its shape needs {nbytes}")


def copy_range(fi, fo, start: int, n: int) -> None:
    """Append ``n`` bytes of ``fi`` from ``start`` to ``fo``: in the kernel when it can, else in 16 MB pieces."""
    if n <= 0:
        return
    fo.flush()
    src_fd, dst_fd = fi.fileno(), fo.fileno()
    off = start
    left = n
    try:
        while left:
            done = os.copy_file_range(src_fd, dst_fd, left, off)
            if done == 0:
                raise HeaderError(f"{fi.name}: ended early while copying (truncated during save?)")
            off += done
            left -= done
        fo.seek(0, os.SEEK_END)
        return
    except (AttributeError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    fo.seek(0, os.SEEK_END)  # the kernel may have appended some bytes before failing
    fi.seek(off)
    while left:
        chunk = fi.read(min(left, 16 << 20))
        if not chunk:
            raise HeaderError(f"{fi.name}: ended early while copying (truncated during save?)")
        fo.write(chunk)
        left -= len(chunk)
