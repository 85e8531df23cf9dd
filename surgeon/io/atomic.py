"""One way to make an output appear: complete or not at all, never inside an input.

Every command that writes a directory or a file (a checkpoint, an adapter, a
fixture, a report, a plot, a cached matrix) goes through :func:`atomic_output`
(directories) or :func:`atomic_file` (single files):

1. :func:`check_output` — the output is outside every input, absent unless
   ``overwrite``, and its parent exists (checked before minutes of work);
2. temporary directories that killed runs on this host left beside it are removed;
3. the work happens in ``.NAME.surgeon-tmp-PID-RANDOM@HOST`` beside the output
   (same filesystem, so the final rename is atomic);
4. it is swapped into place: ``renameat2(RENAME_EXCHANGE)`` where Linux has it,
   so an existing output is never absent; on any error the temporary is deleted.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from surgeon.errors import OutputError

TMP_MARK = ".surgeon-tmp-"


def check_outside(src: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse an output (a checkpoint, a report, a plot) that is, is inside, or contains the input."""
    src, real_out = Path(os.path.realpath(src)), Path(os.path.realpath(out))
    if real_out == src or src in real_out.parents:
        raise OutputError(f"{out}: output must not be the input checkpoint or inside it ({src})")
    if real_out in src.parents:
        raise OutputError(f"{out}: output must not contain the input checkpoint ({src})")


def stays_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Does ``path`` (in checkpoint ``root``, links followed) lead to a file of the checkpoint?

    Inside ``root``, or a Hugging Face hub cache link into the same repository's
    blobs: the cache keeps each file once, as ``models--ORG--NAME/blobs/SHA``, and a
    snapshot ``models--ORG--NAME/snapshots/REV/`` holds links ``FILE -> ../../blobs/SHA``.
    """
    root = Path(root).resolve()
    target = Path(path).resolve()
    if root in target.parents:
        return True
    return root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs"


def check_output(out: str | os.PathLike, inputs=(), *, overwrite: bool = False) -> Path:
    """``out`` made absolute, after checking it is outside ``inputs``, new (or ``overwrite``) and has a parent."""
    out = Path(out).absolute()
    for src in inputs:
        check_outside(src, out)
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: parent directory of the output does not exist")
    return out


@contextmanager
def atomic_output(out: str | os.PathLike, inputs=(), *, overwrite: bool = False, fsync: bool = False):
    """Yield a fresh temporary directory that becomes ``out`` when the block succeeds.

    ``inputs``: paths the output must stay outside. ``fsync``: flush every file
    and the rename to stable storage (power-loss safety, slower).
    """
    out = check_output(out, inputs, overwrite=overwrite)
    remove_stale_tmp(out)
    tmp = tmp_name(out)
    tmp.mkdir(parents=False)
    try:
        yield tmp
        if fsync:
            _fsync_tree(tmp)
        swap_into_place(tmp, out, overwrite)
        if fsync:
            _fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; it replaces ``path`` (``os.replace``) when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tmp_name(out: Path, kind: str = "") -> Path:
    """``.NAME.surgeon-tmp-PID-RANDOM[kind]@HOST`` beside ``out``: same filesystem, so renames are atomic."""
    return out.parent / f".{out.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{kind}@{socket.gethostname()}"


def remove_stale_tmp(out: Path) -> None:
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


def swap_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
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
        old = tmp_name(out, "-old")
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


def cache_dir() -> Path:
    """Where surgeon keeps what it builds once per machine: ``$SURGEON_CACHE`` or ``~/.cache/surgeon``."""
    return Path(os.environ.get("SURGEON_CACHE", Path.home() / ".cache" / "surgeon"))
