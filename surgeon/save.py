"""Write a checkpoint with its staged changes: atomically, touching only what changed.

* A shard with no changed tensor is hard-linked (or copied with ``copy=True``
  or across filesystems) and stays byte-identical.
* A shard whose changed tensors keep their shape and dtype is copied by the
  kernel (``shutil.copyfile`` -> ``sendfile``) and the changed byte ranges are
  overwritten in the *copy*: as fast as ``cp`` and with one tensor in memory.
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
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

from .errors import CheckpointError, OutputError
from .shards import CODES, encode_header, sha256_range, tensor_bytes

MANIFEST = "surgeon.json"
TMP_MARK = ".surgeon-tmp-"
# weights in formats we do not rewrite: copying them next to edited safetensors would ship stale weights
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".safetensors")


def save(ck, out_dir, *, copy: bool = False, overwrite: bool = False, source: dict | None = None,
         manifest: bool = True, check_tokenizer: bool = True, fsync: bool = False) -> dict:
    """Write ``ck`` with its staged changes to ``out_dir``; returns the manifest.

    ``copy``: copy untouched shards instead of hard-linking them.
    ``overwrite``: replace an existing ``out_dir`` (swapped in only once complete).
    ``source``: what made the change (script text, parameters), for the manifest.
    ``fsync``: flush files to stable storage before the final rename (power-loss safety, slower).
    """
    from . import __version__

    src = ck.path
    out = Path(out_dir).absolute()
    _check_output(src, out, overwrite)
    if check_tokenizer:
        _check_tokenizer(ck)
    _remove_stale_tmp(out)
    tmp = out.parent / f".{out.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=False)
    try:
        changes = _changes(ck)
        by_shard: dict[str, list] = {}
        for c in changes:
            by_shard.setdefault(c["file"], []).append(c)
        files = {"linked": [], "copied": [], "patched": [], "rewritten": []}
        for rel, header in ck.shards.items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            mine = by_shard.get(rel)
            if not mine:
                files["linked" if _link_or_copy(src / rel, dst, copy) else "copied"].append(rel)
            elif all(not c["added"] and c["old_shape"] == c["new_shape"] for c in mine):
                _copy_and_patch(src / rel, dst, header, mine, ck)
                files["patched"].append(rel)
            else:
                _rewrite(src / rel, dst, header, mine, ck)
                files["rewritten"].append(rel)
        if ck.index is not None:
            _write_index(ck, tmp, changes)
        _copy_other_files(ck, tmp)
        doc = {
            "surgeon_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "input": str(src),
            "source": source or {"kind": "python"},
            "edits": ck.edits,
            "tensors": [{k: v for k, v in c.items() if k != "value"} for c in changes],
            "config_changes": _config_changes(ck),
            "files": files,
        }
        if manifest:
            prev = src / MANIFEST
            if prev.is_file():
                try:
                    doc["history"] = [json.loads(prev.read_text())]
                except (ValueError, OSError):
                    doc["history"] = [{"unreadable": str(prev)}]
            (tmp / MANIFEST).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        if fsync:
            _fsync_tree(tmp)
        _swap_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return doc


# ----------------------------------------------------------------- checks


def _check_output(src: Path, out: Path, overwrite: bool) -> None:
    real_out = Path(os.path.realpath(out))
    if real_out == src or src in real_out.parents:
        raise OutputError(f"{out}: output must not be the input checkpoint or inside it ({src})")
    if real_out in src.parents:
        raise OutputError(f"{out}: output must not contain the input checkpoint ({src})")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: parent directory of the output does not exist")


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


def _remove_stale_tmp(out: Path) -> None:
    """Delete temporary directories left by killed runs (their pid is gone)."""
    prefix = f".{out.name}{TMP_MARK}"
    if not out.parent.is_dir():
        return
    for p in out.parent.iterdir():
        if p.name.startswith(prefix):
            pid = p.name[len(prefix):].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------- planning


def _changes(ck) -> list[dict]:
    """One record per staged tensor whose bytes really differ from the input."""
    out = []
    for name in sorted(ck.staged):
        value = ck.staged[name]
        added = name in ck.added
        e = None if added else ck.entries[name]
        new_bytes = tensor_bytes(value)
        new_sha = hashlib.sha256(new_bytes).hexdigest()
        old_sha = None if added else sha256_range(str(ck.path / e.file), e.start, e.end)
        new_shape = list(value.shape)
        if not added and old_sha == new_sha and list(e.shape) == new_shape:
            continue  # staged but identical: not a change
        refs = ck.roles.by_tensor.get(name, []) if ck.architecture else []
        whole = next((r for r in refs if r.view.rows is None), refs[0] if refs else None)
        out.append({
            "name": name,
            "key": whole.key if whole else None,
            "role": whole.role if whole else None,
            "layer": whole.layer if whole else None,
            "expert": whole.expert if whole else None,
            "file": ck.added[name] if added else e.file,
            "dtype": CODES[value.dtype],
            "old_shape": None if added else list(e.shape),
            "new_shape": new_shape,
            "old_sha256": old_sha,
            "new_sha256": new_sha,
            "added": added,
            "value": value,
        })
    return out


def _config_changes(ck) -> dict:
    old, new = ck.original_config, ck.config
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


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


def _copy_and_patch(src: Path, dst: Path, header, mine: list[dict], ck) -> None:
    """Kernel copy of the shard, then overwrite the changed tensors' byte ranges in the copy."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for c in mine:
            e = ck.entries[c["name"]]
            f.seek(e.start)
            f.write(tensor_bytes(c["value"]))


def _rewrite(src: Path, dst: Path, header, mine: list[dict], ck) -> None:
    """Stream a shard whose layout changes: new header, then tensor by tensor."""
    changed = {c["name"]: c["value"] for c in mine}
    order = [(e.name, e) for e in header.entries] + [(n, None) for n in changed if n in ck.added]
    layout = []
    for name, e in order:
        v = changed.get(name)
        if v is not None:
            layout.append((name, CODES[v.dtype], tuple(v.shape), v.numel() * v.element_size()))
        else:
            layout.append((name, e.dtype, e.shape, e.nbytes))
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.write(encode_header(layout, header.metadata))
        for name, e in order:
            v = changed.get(name)
            if v is not None:
                fo.write(tensor_bytes(v))
            else:
                _copy_range(fi, fo, e.start, e.nbytes)


def _copy_range(fi, fo, start: int, n: int) -> None:
    fo.flush()
    src_fd, dst_fd = fi.fileno(), fo.fileno()
    off = start
    left = n
    try:
        while left:
            done = os.copy_file_range(src_fd, dst_fd, left, off)
            if done == 0:
                raise CheckpointError(f"{fi.name}: ended early while copying (truncated during save?)")
            off += done
            left -= done
        fo.seek(0, os.SEEK_END)
        return
    except (AttributeError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    fi.seek(off)
    while left:
        chunk = fi.read(min(left, 16 << 20))
        if not chunk:
            raise CheckpointError(f"{fi.name}: ended early while copying (truncated during save?)")
        fo.write(chunk)
        left -= len(chunk)


def _write_index(ck, tmp: Path, changes: list[dict]) -> None:
    index = json.loads(json.dumps(ck.index))
    for c in changes:
        if c["added"]:
            index["weight_map"][c["name"]] = c["file"]
    total = 0
    for name, e in ck.entries.items():
        v = ck.staged.get(name)
        total += e.nbytes if v is None else v.numel() * v.element_size()
    for name in ck.added:
        v = ck.staged[name]
        total += v.numel() * v.element_size()
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
        if p.is_symlink() and ck.path not in p.resolve().parents:
            continue  # never follow a link out of the checkpoint
        shutil.copyfile(p, tmp / p.name)
    if ck.config != ck.original_config:
        (tmp / "config.json").write_text(json.dumps(ck.config, indent=2, ensure_ascii=False) + "\n")
    for rel, data in ck.files.items():
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise OutputError(f"{out}: appeared while saving; left untouched")
        old = out.parent / f".{out.name}{TMP_MARK}{os.getpid()}-old-{secrets.token_hex(4)}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
