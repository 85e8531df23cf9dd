"""Write a checkpoint with its staged changes: atomically, touching only what changed.

* A shard with no changed tensor is hard-linked (or copied with ``copy=True``
  or across filesystems) and stays byte-identical.
* A shard whose changed tensors keep their shape and dtype is copied by the
  kernel (``copy_file_range``, as ``cp`` does) around the changed byte ranges,
  which are written from the staged values: as fast as ``cp``, nothing but
  the staged tensors in memory, and overlapped with the manifest's hashing.
  A deferred value (:meth:`Checkpoint.defer`) is made when its bytes are
  written and dropped right after, so such a save holds one per thread
  (the writer's and the hasher's), however many are staged.
  Under ``surgeon apply`` the copy starts earlier, on the script's first read
  of the shard (:class:`Prefetch`), so it overlaps the edit itself.
* A shard whose layout changes (new rows, new tensors) is rewritten by
  streaming: new header, then each tensor's bytes copied range by range
  (``os.copy_file_range``) or written from the staged value.
* Everything goes to a temporary directory beside ``out_dir`` that is renamed
  into place last, so ``out_dir`` is absent or complete. A manifest
  ``surgeon.json`` records each changed tensor with old and new sha256.

surgeon never opens a file of the input for writing, nor one it did not
create in this run (a hard link shares the input's bytes).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from surgeon._version import __version__
from surgeon.errors import CheckpointError
from surgeon.io.atomic import atomic_output, stays_inside
from surgeon.io.changes import config_changes, staged_changes
from surgeon.io.rows import RowPatches
from surgeon.io.shards import copy_range, dtype_code, encode_header, tensor_bytes
from surgeon.io.values import materialize

MANIFEST = "surgeon.json"
# weights in formats we do not rewrite: copying them next to edited safetensors would ship stale weights
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".safetensors")


class Manifest(dict):
    """What :func:`save` wrote (the ``surgeon.json`` document), with a short repr for the REPL."""

    def __repr__(self) -> str:
        files = self.get("files", {})
        parts = [f"{len(self.get('tensors', []))} tensors changed"]
        parts += [f"{len(v)} {k}" for k, v in files.items() if v]
        if self.get("config_changes"):
            parts.append(f"config: {', '.join(self['config_changes'])}")
        return f"<surgeon save -> {getattr(self, 'output', '?')}: {'; '.join(parts)}>"


def save(ck, out_dir, *, copy: bool = False, overwrite: bool = False, source: dict | None = None,
         manifest: bool = True, check_tokenizer: bool = True, fsync: bool = False) -> Manifest:
    """Write ``ck`` with its staged changes to ``out_dir``; returns the manifest.

    ``copy``: copy untouched shards instead of hard-linking them.
    ``overwrite``: replace an existing ``out_dir`` (swapped in only once complete).
    ``source``: what made the change (script text, parameters), for the manifest.
    ``fsync``: flush files to stable storage before the final rename (power-loss safety, slower).
    Shard copies that ``ck.prefetch`` (:class:`surgeon.io.prefetch.Prefetch`) started
    while the edit ran are moved in and only patched.
    """
    if check_tokenizer:
        _check_tokenizer(ck)
    out = Path(out_dir).absolute()
    with atomic_output(out, (ck.path,), overwrite=overwrite, fsync=fsync) as tmp:
        changes, files = _write_shards(ck, tmp, copy)
        if ck.index is not None:
            _write_index(ck, tmp, changes)
        _copy_other_files(ck, tmp)
        doc = Manifest({
            "surgeon_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "input": str(ck.path),
            "source": source or {"kind": "python"},
            "edits": ck.edits,
            "tensors": [{k: v for k, v in c.items() if k != "value"} for c in changes],
            "config_changes": config_changes(ck.original_config, ck.config),
            "files": files,
        })
        if manifest:
            _write_manifest(ck, tmp, doc)
    doc.output = str(out)
    return doc


def _write_shards(ck, tmp: Path, copy: bool) -> tuple[list[dict], dict]:
    """Every shard into ``tmp``: linked, patched in place or rewritten; returns (changes, files by how)."""
    src, prefetch = ck.path, ck.prefetch
    for rel in ck.shards:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
    # Shards whose staged tensors keep their byte ranges are written in a second thread while
    # this one hashes old and new bytes for the manifest: the kernel copy and sha256 overlap.
    with ThreadPoolExecutor(max_workers=1) as pool:
        early = {rel: pool.submit(_copy_and_patch, src / rel, tmp / rel, ck.shards[rel], names, ck,
                                  prefetch.take(rel) if prefetch else None)
                 for rel, names in _patchable(ck).items()}
        changes = staged_changes(ck)
        for f in early.values():
            f.result()
    by_shard: dict[str, list] = {}
    for c in changes:
        by_shard.setdefault(c["file"], []).append(c)
    files = {"linked": [], "copied": [], "patched": [], "rewritten": []}
    for rel, header in ck.shards.items():
        dst = tmp / rel
        mine = by_shard.get(rel)
        if rel in early and mine:
            files["patched"].append(rel)
        elif not mine:
            if rel in early:  # staged, but every value equals the input's: share the input's bytes
                dst.unlink()
            files["linked" if _link_or_copy(src / rel, dst, copy) else "copied"].append(rel)
        else:
            _rewrite(src / rel, dst, header, mine, ck)
            files["rewritten"].append(rel)
    return changes, files


def _write_manifest(ck, tmp: Path, doc: dict) -> None:
    """surgeon.json, carrying the input's own manifest as history."""
    doc = dict(doc)
    prev = ck.path / MANIFEST
    if prev.is_file():
        try:
            doc["history"] = [json.loads(prev.read_text())]
        except (ValueError, OSError):
            doc["history"] = [{"unreadable": str(prev)}]
    (tmp / MANIFEST).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------- checks


def _check_tokenizer(ck) -> None:
    """Refuse a tokenizer that can emit ids beyond the embedding's rows."""
    if ck.architecture is None:
        return
    try:
        rows = ck.shape("embed")[0]
    except Exception:
        return
    data = ck.files.get("tokenizer.json")
    path = ck.path / "tokenizer.json"
    if data is None and not path.is_file():
        return
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(data.decode()) if data is not None else Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise CheckpointError(f"{path}: cannot be parsed ({str(e).splitlines()[0][:120]})") from None
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > rows:
        raise CheckpointError(f"{path}: tokenizer has {size} tokens but the embedding has {rows} rows")


# ----------------------------------------------------------------- writing


def _link_or_copy(src: Path, dst: Path, copy: bool) -> bool:
    """Hard-link when allowed and possible; returns True if linked."""
    if not copy:
        try:
            os.link(src, dst, follow_symlinks=True)
            return True
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    shutil.copyfile(src, dst)
    return False


def _patchable(ck) -> dict[str, list[str]]:
    """Shard -> staged tensors, for shards where every staged tensor keeps its shape and dtype."""
    out: dict[str, list[str]] = {}
    bad = set()
    for name, value in [*ck.staged.items(), *ck.patches.items()]:
        if name in ck.added:
            bad.add(ck.added[name])
            continue
        e = ck.entries[name]
        out.setdefault(e.file, []).append(name)
        if tuple(value.shape) != e.shape or value.dtype != e.torch_dtype:
            bad.add(e.file)
    return {rel: names for rel, names in out.items() if rel not in bad}


def _writes(ck, names: list[str]) -> list[tuple[int, object]]:
    """(absolute offset, what gives the bytes) replacing the staged tensors' bytes (row patches: only their
    rows), in file order. A staged value's bytes are asked for when they are written (:func:`_bytes`)."""
    out = []
    for name in names:
        if name in ck.staged:
            out.append((ck.entries[name].start, ck.staged[name]))
        else:
            out.extend(ck.patches[name].writes())
    return sorted(out, key=lambda w: w[0])


def _bytes(value) -> memoryview:
    """Bytes to write: a staged value's (a deferred one made now) or a row patch's as they are."""
    return value if isinstance(value, (bytes, memoryview)) else tensor_bytes(materialize(value))


def _copy_and_patch(src: Path, dst: Path, header, names: list[str], ck, ready: Path | None = None) -> None:
    """The shard with the staged tensors' byte ranges replaced, everything else copied by the kernel.

    Same shapes and dtypes mean the same byte ranges, so the file is the input
    with a few ranges swapped: ``copy_file_range`` for the unchanged stretches
    (no bytes through user space), one write per changed tensor. ``ready``: a
    whole copy of ``src`` made beforehand (:class:`Prefetch`), moved in and patched.
    """
    writes = _writes(ck, names)
    if ready is not None:
        os.rename(ready, dst)
        with open(dst, "r+b") as fo:
            for start, value in writes:
                fo.seek(start)
                fo.write(_bytes(value))
            if fo.seek(0, os.SEEK_END) != header.file_size:
                raise CheckpointError(f"{dst}: holds {fo.tell()} bytes after patching, expected {header.file_size}")
        return
    pos = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for start, value in writes:
            copy_range(fi, fo, pos, start - pos)
            data = _bytes(value)
            fo.write(data)
            pos = start + data.nbytes
            del data  # a deferred value's bytes go before the next one is made
        copy_range(fi, fo, pos, header.file_size - pos)
        if fo.tell() != header.file_size:
            raise CheckpointError(f"{dst}: wrote {fo.tell()} bytes, expected {header.file_size}")


def _rewrite(src: Path, dst: Path, header, mine: list[dict], ck) -> None:
    """Stream a shard whose layout changes: new header, then tensor by tensor (row patches row range by range)."""
    changed = {c["name"]: c["value"] for c in mine}
    order = [(e.name, e) for e in header.entries] + [(n, None) for n in changed if n in ck.added]
    layout = []
    for name, e in order:
        v = changed.get(name)
        if v is not None:
            layout.append((name, dtype_code(v.dtype), tuple(v.shape), v.nbytes))
        else:
            layout.append((name, e.dtype, e.shape, e.nbytes))
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.write(encode_header(layout, header.metadata))
        for name, e in order:
            v = changed.get(name)
            if isinstance(v, RowPatches):
                v.write_to(fi, fo)
            elif v is not None:
                fo.write(_bytes(v))
            else:
                copy_range(fi, fo, e.start, e.nbytes)


def _write_index(ck, tmp: Path, changes: list[dict]) -> None:
    index = json.loads(json.dumps(ck.index))
    for c in changes:
        if c["added"]:
            index["weight_map"][c["name"]] = c["file"]
    total = 0
    for name, e in ck.entries.items():
        v = ck.staged.get(name, ck.patches.get(name))
        total += e.nbytes if v is None else v.nbytes
    for name in ck.added:
        total += ck.staged[name].nbytes
    index.setdefault("metadata", {})["total_size"] = total
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _copy_other_files(ck, tmp: Path) -> None:
    """config, tokenizer, generation config...: copied; staged ones and a changed config written."""
    weights = set(ck.shards) | {"model.safetensors.index.json", MANIFEST}
    for p in sorted(ck.path.iterdir()):
        if p.name in weights or p.name in ck.files or not p.is_file() or p.name.endswith(_SKIP_SUFFIXES):
            continue
        if p.name == "config.json" and ck.config != ck.original_config:
            continue
        if p.is_symlink() and not stays_inside(ck.path, p) and not ck.allow_external_links:
            continue  # never follow a link out of the checkpoint unless the user said so
        shutil.copyfile(p, tmp / p.name)
    if ck.config != ck.original_config:
        (tmp / "config.json").write_text(json.dumps(ck.config, indent=2, ensure_ascii=False) + "\n")
    for rel, data in ck.files.items():
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
