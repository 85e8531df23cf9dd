"""Safetensors shards at the byte level: header parsing, validation, reads.

Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header
length N, N bytes of JSON mapping tensor name -> {dtype, shape, data_offsets},
then the data buffer. We parse the header ourselves (instead of trusting
``safe_open``) because the writer needs each tensor's byte range to patch a
copied shard in place, and because a hostile header must fail with a message
that names the file before anything is mapped or allocated.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from math import prod

import torch

from .errors import HeaderError

# safetensors dtype code -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
}
CODES = {dt: code for code, (dt, _) in DTYPES.items()}

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
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]


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


def read_header(path: str, rel: str) -> ShardHeader:
    """Parse and validate the header of ``path`` (``rel`` names it in errors).

    Checks everything a reader relies on: header length within the file,
    JSON object, known dtypes, integer shapes, byte ranges that match the
    shape, do not overlap, leave no gaps and end exactly at the end of file.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise HeaderError(f"{rel}: truncated: {size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                raise HeaderError(f"{rel}: header length {n} exceeds the {MAX_HEADER}-byte limit")
            if 8 + n > size:
                raise HeaderError(f"{rel}: truncated: header claims {n} bytes but the file has {size - 8}")
            raw = f.read(n)
    except OSError as e:
        raise HeaderError(f"{rel}: cannot read: {e.strerror}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeaderError(f"{rel}: header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise HeaderError(f"{rel}: header is not a JSON object")
    meta = doc.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise HeaderError(f"{rel}: __metadata__ must map strings to strings")
    data_start = 8 + n
    data_len = size - data_start
    entries = []
    for name, spec in doc.items():
        if not isinstance(spec, dict):
            raise HeaderError(f"{rel}: tensor {name!r}: entry is not an object")
        dtype, shape, offs = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if dtype not in DTYPES:
            raise HeaderError(f"{rel}: tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise HeaderError(f"{rel}: tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
            raise HeaderError(f"{rel}: tensor {name!r}: data_offsets {offs!r} is not a pair of integers")
        b, e = offs
        if not 0 <= b <= e:
            raise HeaderError(f"{rel}: tensor {name!r}: data_offsets {offs} are not ordered")
        if e > data_len:
            raise HeaderError(
                f"{rel}: tensor {name!r}: data_offsets end at {e} but the file holds {data_len} data bytes (truncated?)"
            )
        want = prod(shape) * DTYPES[dtype][1]
        if e - b != want:
            raise HeaderError(f"{rel}: tensor {name!r}: {e - b} bytes for shape {shape} {dtype}, expected {want}")
        entries.append(TensorEntry(name, rel, dtype, tuple(shape), data_start + b, data_start + e))
    entries.sort(key=lambda t: (t.start, t.end))
    pos = data_start
    for t in entries:
        if t.start < pos:
            raise HeaderError(f"{rel}: tensor {t.name!r} overlaps the tensor before it")
        if t.start > pos:
            raise HeaderError(f"{rel}: {t.start - pos} unaccounted bytes before tensor {t.name!r}")
        pos = t.end
    if pos != size:
        raise HeaderError(f"{rel}: {size - pos} trailing bytes after the last tensor")
    return ShardHeader(rel, n, entries, meta, size)


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


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, as safetensors stores them."""
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
