"""Copy the shards an edit reads while it runs, so that saving only patches them.

Used by ``surgeon apply`` (:func:`surgeon.edits.apply.apply`): the checkpoint
calls :meth:`Prefetch.read` on a shard's first read; :func:`surgeon.io.save.save`
takes the finished copy (:meth:`Prefetch.take`) instead of copying the shard itself.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from surgeon.io.atomic import check_output, remove_stale_tmp, tmp_name
from surgeon.io.shards import copy_range


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

    def __init__(self, ck, out_dir, *, overwrite: bool = False, limit: int = 2):
        self.ck, self.limit = ck, limit
        self.out = check_output(out_dir, (ck.path,), overwrite=overwrite)  # fail before minutes of editing
        self.dir: Path | None = None
        self.jobs: dict = {}
        self.pool = None

    def read(self, rel: str) -> None:
        """A tensor of shard ``rel`` is being read: start copying it (once, within the limit)."""
        if rel in self.jobs or len(self.jobs) >= self.limit or not self.out.parent.is_dir():
            return
        if self.dir is None:
            remove_stale_tmp(self.out)
            self.dir = tmp_name(self.out, "-prefetch")
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
        copy_range(fi, fo, 0, os.fstat(fi.fileno()).st_size)
