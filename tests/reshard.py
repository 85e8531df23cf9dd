"""Test helper: the same tensors, byte for byte, split into more shards.

Real checkpoints of 7B+ come in many shards; the fixtures come in one file.
``reshard`` streams each tensor's bytes from the source into new shards (one
64 MB piece in memory at a time) and writes the index transformers expects.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from surgeon.io.checkpoint import open_checkpoint
from surgeon.io.shards import write_shard


def byte_chunks(path, start: int, end: int, piece: int = 64 << 20):
    with open(path, "rb") as f:
        f.seek(start)
        while start < end:
            data = f.read(min(piece, end - start))
            if not data:
                raise EOFError(f"{path}: ended at {start}, expected {end}")
            start += len(data)
            yield data


def reshard(src, dst, num_shards: int) -> Path:
    """Write ``src``'s tensors into ``num_shards`` shards under ``dst`` (plus its other files)."""
    src, dst = Path(src), Path(dst)
    ck = open_checkpoint(src)
    entries = sorted(ck.entries.values(), key=lambda e: (e.file, e.start))
    total = sum(e.nbytes for e in entries)
    groups: list[list] = [[] for _ in range(num_shards)]
    cum = 0
    for e in entries:
        groups[min(num_shards - 1, int((cum + e.nbytes / 2) * num_shards // total))].append(e)
        cum += e.nbytes
    dst.mkdir(parents=True)
    weight_map = {}
    for k, group in enumerate(groups):
        rel = f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        items = [(e.name, e.dtype, e.shape, byte_chunks(src / e.file, e.start, e.end)) for e in group]
        write_shard(dst / rel, items, {"format": "pt"})
        weight_map.update({e.name: rel for e in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors") and p.name != "model.safetensors.index.json":
            shutil.copyfile(p, dst / p.name)
    return dst
