"""Write a checkpoint with its staged changes: atomically, touching only what changed.

* A shard with no changed tensor is hard-linked (or copied with ``copy=True``
  or across filesystems) and stays byte-identical.
* A shard whose changed tensors keep their shape and dtype is copied by the
  kernel (``copy_file_range``, as ``cp`` does) around the changed byte ranges,
  which are written from the staged values: as fast as ``cp``, nothing but
  the staged tensors in memory, and overlapped with the manifest's hashing.
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

import ctypes
import datetime as _dt
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import CheckpointError, OutputError
from .shards import dtype_code, encode_header, sha256_range, tensor_bytes

MANIFEST = "surgeon.json"
TMP_MARK = ".surgeon-tmp-"
# weights in formats we do not rewrite: copying them next to edited safetensors would ship stale weights
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".safetensors")


def save(ck, out_dir, *, copy: bool = False, overwrite: bool = False, source: dict | None = None,
         manifest: bool = True, check_tokenizer: bool = True, fsync: bool = False,
         prefetch: Prefetch | None = None) -> dict:
    """Write ``ck`` with its staged changes to ``out_dir``; returns the manifest.

    ``copy``: copy untouched shards instead of hard-linking them.
    ``overwrite``: replace an existing ``out_dir`` (swapped in only once complete).
    ``source``: what made the change (script text, parameters), for the manifest.
    ``fsync``: flush files to stable storage before the final rename (power-loss safety, slower).
    ``prefetch``: shard copies started while the edit ran (:class:`Prefetch`); a
    patchable shard is then only patched.
    """
    from . import __version__

    src = ck.path
    out = Path(out_dir).absolute()
    _check_output(src, out, overwrite)
    if check_tokenizer:
        _check_tokenizer(ck)
    _remove_stale_tmp(out)
    tmp = _tmp_name(out)
    tmp.mkdir(parents=False)
    try:
        for rel in ck.shards:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        # Shards whose staged tensors keep their byte ranges are written in a second thread while
        # this one hashes old and new bytes for the manifest: the kernel copy and sha256 overlap.
        with ThreadPoolExecutor(max_workers=1) as pool:
            early = {rel: pool.submit(_copy_and_patch, src / rel, tmp / rel, ck.shards[rel], names, ck,
                                      prefetch.take(rel) if prefetch else None)
                     for rel, names in _patchable(ck).items()}
            changes = _changes(ck)
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
        if fsync:
            _fsync_path(out.parent)  # the rename itself
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return doc


# ----------------------------------------------------------------- prefetch


class Prefetch:
    """Copy the shards an edit reads, in a background thread, while the edit runs.

    ``surgeon apply`` pays ~1 s to import torch and run the script before
    save() knows which shard changed; a shard that a script reads is usually
    the one it changes. Started on a shard's first read, at most ``limit``
    shards: a kernel copy (``copy_file_range``, which leaves the GIL) into a
    scratch directory beside the output, so that save() only moves it in and
    writes the changed ranges. A shard read but not changed costs one wasted
    copy, deleted on :meth:`close`; the scratch directory follows the same
    naming as save()'s temporary one, so a killed run's is removed by the next.
    """

    def __init__(self, ck, out_dir, limit: int = 2):
        self.ck, self.out, self.limit = ck, Path(out_dir).absolute(), limit
        self.dir: Path | None = None
        self.jobs: dict = {}
        self.pool = None

    def read(self, rel: str) -> None:
        """A tensor of shard ``rel`` is being read: start copying it (once, within the limit)."""
        if rel in self.jobs or len(self.jobs) >= self.limit or not self.out.parent.is_dir():
            return
        if self.dir is None:
            _remove_stale_tmp(self.out)
            self.dir = _tmp_name(self.out, "-prefetch")
            self.dir.mkdir()
            self.pool = ThreadPoolExecutor(max_workers=1)
        dst = self.dir / rel.replace("/", "%")
        self.jobs[rel] = (dst, self.pool.submit(_copy_whole, self.ck.path / rel, dst))

    def take(self, rel: str) -> Path | None:
        """The finished copy of ``rel`` (waits for it), or None if there is none or it failed."""
        job = self.jobs.pop(rel, None)
        if job is None:
            return None
        dst, fut = job
        try:
            fut.result()
        except OSError:
            return None  # save() copies it itself
        size = self.ck.shards[rel].file_size
        return dst if dst.stat().st_size == size else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _copy_whole(src: Path, dst: Path) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        _copy_range(fi, fo, 0, os.fstat(fi.fileno()).st_size)


# ----------------------------------------------------------------- checks


def check_outside(src: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse an output (a checkpoint, a report, a plot) that is, is inside, or contains the input."""
    src, real_out = Path(os.path.realpath(src)), Path(os.path.realpath(out))
    if real_out == src or src in real_out.parents:
        raise OutputError(f"{out}: output must not be the input checkpoint or inside it ({src})")
    if real_out in src.parents:
        raise OutputError(f"{out}: output must not contain the input checkpoint ({src})")


def _check_output(src: Path, out: Path, overwrite: bool) -> None:
    check_outside(src, out)
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


def _tmp_name(out: Path, kind: str = "") -> Path:
    """``.NAME.surgeon-tmp-PID-RANDOM[-old]@HOST`` beside ``out``: same filesystem, so renames are atomic."""
    return out.parent / f".{out.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{kind}@{socket.gethostname()}"


def _remove_stale_tmp(out: Path) -> None:
    """Delete temporary directories left beside ``out`` by killed runs on this host (their pid is gone)."""
    prefix = f".{out.name}{TMP_MARK}"
    if not out.parent.is_dir():
        return
    host = socket.gethostname()
    for p in out.parent.iterdir():
        if p.name.startswith(prefix):
            rest, _, owner = p.name[len(prefix):].partition("@")
            pid = rest.split("-")[0]
            if pid.isdigit() and owner in ("", host) and not _alive(int(pid)):
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
            "dtype": dtype_code(value.dtype),
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


def _patchable(ck) -> dict[str, list[str]]:
    """Shard -> staged tensors, for shards where every staged tensor keeps its shape and dtype."""
    out: dict[str, list[str]] = {}
    bad = set()
    for name, value in ck.staged.items():
        if name in ck.added:
            bad.add(ck.added[name])
            continue
        e = ck.entries[name]
        out.setdefault(e.file, []).append(name)
        if tuple(value.shape) != e.shape or value.dtype != e.torch_dtype:
            bad.add(e.file)
    return {rel: names for rel, names in out.items() if rel not in bad}


def _copy_and_patch(src: Path, dst: Path, header, names: list[str], ck, ready: Path | None = None) -> None:
    """The shard with the staged tensors' byte ranges replaced, everything else copied by the kernel.

    Same shapes and dtypes mean the same byte ranges, so the file is the input
    with a few ranges swapped: ``copy_file_range`` for the unchanged stretches
    (no bytes through user space), one write per changed tensor. ``ready``: a
    whole copy of ``src`` made beforehand (:class:`Prefetch`), moved in and patched.
    """
    spans = sorted((ck.entries[n].start, ck.entries[n].end, n) for n in names)
    if ready is not None:
        os.rename(ready, dst)
        with open(dst, "r+b") as fo:
            for start, _end, name in spans:
                fo.seek(start)
                fo.write(tensor_bytes(ck.staged[name]))
            if fo.seek(0, os.SEEK_END) != header.file_size:
                raise CheckpointError(f"{dst}: holds {fo.tell()} bytes after patching, expected {header.file_size}")
        return
    pos = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for start, end, name in spans:
            _copy_range(fi, fo, pos, start - pos)
            fo.write(tensor_bytes(ck.staged[name]))
            pos = end
        _copy_range(fi, fo, pos, header.file_size - pos)
        if fo.tell() != header.file_size:
            raise CheckpointError(f"{dst}: wrote {fo.tell()} bytes, expected {header.file_size}")


def _rewrite(src: Path, dst: Path, header, mine: list[dict], ck) -> None:
    """Stream a shard whose layout changes: new header, then tensor by tensor."""
    changed = {c["name"]: c["value"] for c in mine}
    order = [(e.name, e) for e in header.entries] + [(n, None) for n in changed if n in ck.added]
    layout = []
    for name, e in order:
        v = changed.get(name)
        if v is not None:
            layout.append((name, dtype_code(v.dtype), tuple(v.shape), v.numel() * v.element_size()))
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
                raise CheckpointError(f"{fi.name}: ended early while copying (truncated during save?)")
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
        if p.is_symlink() and ck.path not in p.resolve().parents and not ck.allow_external_links:
            continue  # never follow a link out of the checkpoint unless the user said so
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
            _fsync_path(p)
    _fsync_path(root)


def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Make ``tmp`` appear as ``out`` in one step; an existing ``out`` is exchanged, then deleted.

    With ``renameat2(RENAME_EXCHANGE)`` (Linux 3.15+) there is no moment at
    which ``out`` is absent; elsewhere two renames leave a short window.
    """
    if out.exists():
        if not overwrite:
            raise OutputError(f"{out}: appeared while saving; left untouched")
        if _exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old output
            return
        old = _tmp_name(out, "-old")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
