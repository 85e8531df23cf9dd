"""What a checkpoint directory holds, checked before anything is read: config, shard index, headers.

:func:`read_layout` is the validating half of :func:`surgeon.io.checkpoint.open_checkpoint`:
config.json must be a JSON object, the index must map tensor names to shard files inside the
directory, every shard's header must parse and no tensor may sit in two shards or disagree with
the index. Pickle-based weights are refused by name; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from surgeon.errors import CheckpointError
from surgeon.io.atomic import stays_inside
from surgeon.io.shards import ShardHeader, TensorEntry, _brief, read_header

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "consolidated.00.pth",
           "tf_model.h5", "flax_model.msgpack")


class Layout(NamedTuple):
    """A checked checkpoint directory: its resolved path, config, shard headers, tensors and index."""

    root: Path
    config: dict
    shards: dict[str, ShardHeader]
    entries: dict[str, TensorEntry]
    index: dict | None


def read_layout(path: str | os.PathLike, allow_external_links: bool) -> Layout:
    """Read and check ``path``'s config.json, shard index and safetensors headers (no tensor data)."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a checkpoint directory")
    root = root.resolve()
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (a checkpoint directory needs config.json)")
    config = _read_json(cfg_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object")
    index, shard_files = _shard_files(root)
    shards, entries = _read_headers(root, shard_files, index, allow_external_links)
    if index is not None:
        _check_index(root, index["weight_map"], entries)
    return Layout(root, config, shards, entries, index)


def _shard_files(root: Path) -> tuple[dict | None, list[str]]:
    """The index (None for a single-file checkpoint) and the shard files it names."""
    if (root / INDEX).exists():
        index = _read_index(root)
        return index, sorted(set(index["weight_map"].values()))
    if (root / SINGLE).exists():
        return None, [SINGLE]
    pickled = [p for p in PICKLES if (root / p).exists()] or sorted(p.name for p in root.glob("*.bin"))
    if pickled:
        raise CheckpointError(
            f"{root / pickled[0]}: pickle-based weights; surgeon never unpickles — "
            "convert the checkpoint to safetensors first"
        )
    raise CheckpointError(f"{root}: no {SINGLE} or {INDEX}")


def _read_headers(root: Path, shard_files: list[str], index: dict | None,
                  allow_external_links: bool) -> tuple[dict[str, ShardHeader], dict[str, TensorEntry]]:
    """Each shard's header, and every tensor's entry (a tensor in two shards is an error)."""
    shards: dict[str, ShardHeader] = {}
    entries: dict[str, TensorEntry] = {}
    for rel in shard_files:
        full = _safe_member(root, rel, allow_external_links, what="shard")
        if not full.is_file():
            named = f"named by {INDEX} " if index is not None else ""
            raise CheckpointError(f"{root / rel}: shard {named}is missing or not a file")
        header = read_header(str(full), rel)
        shards[rel] = header
        for e in header.entries:
            if e.name in entries:
                raise CheckpointError(f"{root / rel}: tensor {_brief(e.name)} is also in {entries[e.name].file}")
            entries[e.name] = e
    return shards, entries


def _check_index(root: Path, wm: dict[str, str], entries: dict[str, TensorEntry]) -> None:
    """The index's weight_map and the shards' headers agree, both ways."""
    for name, rel in wm.items():
        if name not in entries or entries[name].file != rel:
            raise CheckpointError(f"{root / INDEX}: maps {_brief(name)} to {rel!r}, which does not contain it")
    for name, e in entries.items():
        if name not in wm:
            raise CheckpointError(f"{root / e.file}: holds tensor {_brief(name)} that {INDEX} does not list")


def _read_json(p: Path):
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{p}: not valid JSON ({e.__class__.__name__})") from None


def _read_index(root: Path) -> dict:
    p = root / INDEX
    index = _read_json(p)
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise CheckpointError(f"{p}: no weight_map of tensor name -> shard file")
    for rel in set(wm.values()):
        if not rel or not rel.isprintable():
            raise CheckpointError(f"{p}: shard file name {_brief(rel)} is empty or holds unprintable characters")
    if not isinstance(index.get("metadata", {}), dict):
        raise CheckpointError(f"{p}: metadata is not a JSON object")
    return index


def _safe_member(root: Path, rel: str, allow_external_links: bool, what: str) -> Path:
    """``root/rel``, refusing absolute paths, ``..`` and (by default) links that leave ``root``."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise CheckpointError(f"{root / INDEX}: {what} path {rel!r} leaves the checkpoint directory")
    full = root / rel
    if allow_external_links or ("/" not in rel and not full.is_symlink()):
        return full  # a plain file directly in root (the common case) cannot lead outside: skip resolve()
    if full.exists() and not stays_inside(root, full):
        raise CheckpointError(
            f"{full}: {what} is a link to {full.resolve()}, outside the checkpoint (pass allow_external_links / "
            f"--allow-external-links to accept)"
        )
    return full
