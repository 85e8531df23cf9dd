"""Open a Hugging Face checkpoint directory lazily and stage changes to it.

``surgeon.open(path)`` reads config.json, the shard index and the safetensors
headers, nothing else. Tensors are read on demand, one at a time. Changes are
*staged* in memory (``ck[key] = t``), or as a recipe made on each read
(``ck.defer(key, update)``: nothing held until then), and only reach disk through
:func:`surgeon.io.save.save`, which never writes into the input directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import EditError, RoleError, UnknownArchitecture
from surgeon.io.layout import read_layout
from surgeon.io.rows import RowPatches, rows_on_disk
from surgeon.io.save import save
from surgeon.io.shards import ShardHeader, TensorEntry, read_tensor
from surgeon.io.values import Deferred, cast_checked, materialize, shares_memory
from surgeon.roles import Architecture, RoleRef, RoleTable, find_architecture

if TYPE_CHECKING:  # torch is imported on the first tensor read, not on open
    import torch


def open_checkpoint(path: str | os.PathLike, *, allow_external_links: bool = False) -> Checkpoint:
    """Open ``path`` (a directory) reading headers only (checked by :func:`surgeon.io.layout.read_layout`).

    ``allow_external_links``: accept shards that are symlinks to files outside
    the directory (as in a Hugging Face cache snapshot). Off by default, so a
    crafted checkpoint cannot make surgeon read arbitrary files.
    """
    layout = read_layout(path, allow_external_links)
    ck = Checkpoint(layout.root, layout.config, layout.shards, layout.entries, layout.index)
    ck.allow_external_links = allow_external_links  # save() then copies linked config/tokenizer files too
    return ck


class Checkpoint:
    """A checkpoint directory opened lazily, with staged (unsaved) changes.

    Indexing takes a role key (``"layers.3.mlp.down"``, ``"lm_head"``,
    ``"layers.0.attn.q.bias"``) or a raw tensor name, and returns float32 in
    (out, in) orientation; assignment stages a change, checked and cast back
    to the stored dtype. With tied embeddings ``lm_head`` *is* ``embed``:
    writing either changes both.
    """

    def __init__(self, root: Path, config: dict, shards: dict[str, ShardHeader], entries: dict[str, TensorEntry],
                 index: dict | None):
        self.path = root
        self.allow_external_links = False
        self.prefetch = None  # a surgeon.io.prefetch.Prefetch while `surgeon apply` runs its script
        self.config = config  # edit freely: save() writes it if it changed
        self.original_config = json.loads(json.dumps(config))
        self.shards = shards
        self.entries = entries
        self.index = index
        # tensor name -> stored dtype, stored orientation: a tensor, or a Deferred made on each read (defer)
        self.staged: dict[str, torch.Tensor | Deferred] = {}
        self.patches: dict[str, RowPatches] = {}  # tensor name -> staged rows (set_rows), the rest in the file
        self.added: dict[str, str] = {}  # new tensor name -> shard it goes into
        self.files: dict[str, bytes] = {}  # other files to write (tokenizer edits), relative name -> bytes
        self.edits: list[dict] = []  # what each edit function did, for the manifest
        try:
            self.architecture: Architecture | None = find_architecture(config)
            self._arch_error = None
        except UnknownArchitecture as e:
            self.architecture, self._arch_error = None, e
        self._roles: RoleTable | None = None

    # ------------------------------------------------------------------ roles

    @property
    def roles(self) -> RoleTable:
        """The role table (from the family's table or inferred); raises UnknownArchitecture when neither exists."""
        if self.architecture is None:
            raise self._arch_error
        if self._roles is None:
            self._roles = RoleTable(self.architecture, self.config, list(self.entries) + list(self.added))
        return self._roles

    @property
    def unknown_reason(self) -> str | None:
        """Why this checkpoint has no roles (no table and no inference), or None when it has them."""
        return str(self._arch_error) if self.architecture is None else None

    def resolve(self, key: str) -> RoleRef:
        """Role key or raw tensor name -> RoleRef (raw names also work for unknown families)."""
        if self.architecture is None:
            if key in self.entries or key in self.added:
                return RoleRef(key, "", key.rpartition(".")[2], key)
            raise RoleError(f"{key!r}: {self._arch_error}")
        return self.roles.resolve(key)

    def keys(self) -> list[str]:
        """Every role key (parts of fused tensors included)."""
        return list(self.roles.by_key)

    def __contains__(self, key: str) -> bool:
        """Whether a role key or raw name exists (a plain lookup: no did-you-mean search on a miss)."""
        if key in self.entries or key in self.added:
            return True
        if self.architecture is None:
            return False
        by_key = self.roles.by_key
        return key in by_key or (key.endswith(".weight") and key[: -len(".weight")] in by_key)

    @property
    def num_layers(self) -> int:
        n = self.architecture.num_layers(self.config) if self.architecture else None
        if n is None:
            layers = [r.layer for r in self.roles.by_key.values() if r.layer is not None]
            n = max(layers) + 1 if layers else 0
        return n

    @property
    def tied(self) -> bool:
        """lm_head shares the embedding matrix (writing one writes the other)."""
        ref = self.roles.by_key.get("lm_head") if self.architecture else None
        return bool(ref and ref.tied)

    # ------------------------------------------------------------------ reads

    def stored(self, name: str) -> torch.Tensor:
        """A tensor as stored on disk (dtype and orientation), staged value (or rows) if any."""
        if name in self.staged:
            return materialize(self.staged[name])
        if name in self.patches:
            return self.patches[name].materialize(self.path / self.entries[name].file)
        return self.original(name)

    def original(self, name: str) -> torch.Tensor:
        """The tensor as it is in the input files, ignoring staged changes."""
        e = self.entries.get(name)
        if e is None:
            raise RoleError(f"no tensor {name!r} in {self.path}")
        return read_tensor(self.path / e.file, e)

    def get(self, key: str, dtype: torch.dtype | str | None = "float32", *, rows: slice | None = None) -> torch.Tensor:
        """The tensor for a role key or raw name, (out, in) orientation, as ``dtype`` (None: stored).

        float32 by default because edits are computed in float32 and cast back
        on :meth:`set`; torch itself is imported on the first tensor read.
        ``rows=slice(a, b)``: only those rows (of the (out, in) view), reading
        only their bytes (staged rows laid over them), so a row-wise edit of a
        128k-row embedding never holds the matrix; a Conv1D (transposed) or
        head-interleaved view, whose rows are not contiguous on disk, is read whole and sliced.
        """
        ref = self.resolve(key)
        if self.prefetch is not None and ref.tensor in self.entries and ref.tensor not in self.staged:
            self.prefetch.read(self.entries[ref.tensor].file)  # before torch's import: the copy overlaps it
        import torch

        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if rows is not None:
            t = self._read_rows(ref, key, rows)
            return t if dtype is None else t.to(dtype)
        stored = self.stored(ref.tensor)
        t = ref.view.read(stored)
        t = t if dtype is None else t.to(dtype)
        held = self.staged.get(ref.tensor)
        if held is not None and not isinstance(held, Deferred) and shares_memory(t, stored):
            t = t.clone()  # changing the returned tensor in place must not bypass set()'s checks
        return t

    __getitem__ = get

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape in (out, in) orientation, from the header (or the staged value or rows)."""
        return self.resolve(key).view.shape(self._stored_shape(self.resolve(key).tensor))

    def _stored_shape(self, name: str) -> tuple[int, ...]:
        if name in self.staged:
            return tuple(self.staged[name].shape)
        return self.patches[name].shape if name in self.patches else self.entries[name].shape

    def _read_rows(self, ref: RoleRef, key: str, rows: slice) -> torch.Tensor:
        n = self.shape(key)[0] if self.shape(key) else 0
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise EditError(f"{key}: rows must be a slice with step 1, got {rows!r}")
        a, b, _ = rows.indices(n)
        b = max(a, b)
        off = rows_on_disk(ref.view, self._stored_shape(ref.tensor))
        name = ref.tensor
        if off is None or name in self.staged or name not in self.entries:
            return ref.view.read(self.stored(name))[a:b]
        patched = self.patches.get(name) or RowPatches(self.entries[name])
        return patched.read(self.path / self.entries[name].file, off + a, off + b)

    def dtype(self, key: str) -> torch.dtype:
        ref = self.resolve(key)
        return self.stored_dtype(ref.tensor)

    def stored_dtype(self, name: str) -> torch.dtype:
        if name in self.staged:
            return self.staged[name].dtype
        return self.entries[name].torch_dtype  # row patches keep the stored dtype

    # ------------------------------------------------------------------ writes

    def set(self, key: str, value: torch.Tensor, *, resize: bool = False) -> None:
        """Stage ``value`` for a role key or raw name.

        The shape must match unless ``resize`` (used to add vocabulary rows).
        Values must be finite and representable in the stored dtype: an edit
        that overflows fp16 fails here, naming the tensor, rather than
        writing inf into the checkpoint.
        """
        import torch

        ref = self.resolve(key)
        value = torch.as_tensor(value).detach().cpu()
        want = self.shape(key)
        if tuple(value.shape) != tuple(want):
            if not (resize and ref.view.rows is None and value.dim() == len(want)):
                raise EditError(f"{key} ({ref.tensor}): shape {tuple(value.shape)} does not match {tuple(want)}")
        dtype = self.stored_dtype(ref.tensor)
        stored_value = cast_checked(value, dtype, f"{key} ({ref.tensor})")
        base = self.stored(ref.tensor) if ref.view.rows is not None else None
        staged = ref.view.write(base, stored_value).contiguous()
        self.staged[ref.tensor] = staged.clone() if shares_memory(staged, value) else staged
        self.patches.pop(ref.tensor, None)  # the whole value supersedes staged rows

    def defer(self, key: str, update: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Stage ``update(ck[key])`` without computing it: the value is made on each read and dropped after.

        ``update`` gets the key's current value (float32, (out, in), what
        ``ck[key]`` returns now: earlier staged edits, deferred ones included,
        are its base) and returns the new one, checked and cast as by
        :meth:`set` when it is made. Only what ``update`` closes over is held
        (the fine-tune's: a delta file's name), so staging every tensor of a
        model costs nothing and :func:`surgeon.io.save.save` holds one at a
        time. ``update`` must give the same value on every call.
        """
        ref = self.resolve(key)
        name, what = ref.tensor, f"{key} ({ref.tensor})"
        before, dtype, want = self._frozen(name), self.stored_dtype(name), self.shape(key)

        def make():
            base = before()
            value = update(ref.view.read(base).float())
            if tuple(value.shape) != tuple(want):
                raise EditError(f"{what}: deferred value of shape {tuple(value.shape)} does not match {tuple(want)}")
            stored_value = cast_checked(value.detach().cpu(), dtype, what)
            return ref.view.write(base if ref.view.rows is not None else None, stored_value).contiguous()

        self.staged[name] = Deferred(self._stored_shape(name), dtype, make)
        self.patches.pop(name, None)

    def _frozen(self, name: str) -> Callable[[], torch.Tensor]:
        """Reads tensor ``name`` as it is staged now, later (holding no more than the staged value already holds)."""
        prior = self.staged.get(name)
        if prior is not None:
            return lambda: materialize(prior)
        e, rows = self.entries[name], self.patches.get(name)
        path = self.path / e.file
        return (lambda: rows.materialize(path)) if rows is not None else (lambda: read_tensor(path, e))

    def set_rows(self, key: str, start: int, value: torch.Tensor) -> None:
        """Stage rows ``start .. start + len(value)`` of a role key or raw name ((out, in) rows).

        Only these rows are held: :func:`surgeon.io.save.save` writes them at
        their byte offsets and copies the rest of the tensor from the input
        (:class:`surgeon.io.rows.RowPatches`). Rows may run past the end to
        append (vocabulary growth: ``start`` at most the current row count; the
        shard is then rewritten, still streaming). Values are checked as in
        :meth:`set`. A view whose rows are not contiguous on disk (Conv1D,
        head-interleaved parts) is read whole, changed and set.
        """
        import torch

        ref = self.resolve(key)
        value = torch.as_tensor(value).detach().cpu()
        want = self.shape(key)
        n = want[0] if want else 0
        what = f"{key} ({ref.tensor})"
        if not want or tuple(value.shape[1:]) != tuple(want[1:]) or value.dim() != len(want):
            raise EditError(f"{what}: rows of shape {tuple(value.shape)} do not fit shape {tuple(want)}")
        if not isinstance(start, int) or not 0 <= start <= n:
            raise EditError(f"{what}: start row {start!r} is outside 0..{n}")
        grows = start + value.shape[0] > n
        off = rows_on_disk(ref.view, self._stored_shape(ref.tensor))
        if grows and (ref.view.rows is not None or off != 0):
            raise EditError(f"{what}: rows {start}..{start + value.shape[0]} run past the {n} rows of a part "
                            "or Conv1D view")
        stored_value = cast_checked(value, self.stored_dtype(ref.tensor), what)
        if off is None or ref.tensor in self.staged or ref.tensor not in self.entries:
            whole = ref.view.read(self.stored(ref.tensor))
            whole = torch.cat([whole[:start], stored_value, whole[start + value.shape[0]:]]) if grows else whole.clone()
            whole[start : start + value.shape[0]] = stored_value
            self.set(key, whole, resize=grows)
            return
        patched = self.patches.setdefault(ref.tensor, RowPatches(self.entries[ref.tensor]))
        patched.put(off + start, stored_value.clone() if shares_memory(stored_value, value) else stored_value)

    __setitem__ = set

    def add(self, key: str, value: torch.Tensor, *, dtype: torch.dtype | None = None) -> str:
        """Add a tensor that does not exist yet, e.g. ``layers.3.attn.o.bias``.

        The new tensor goes into the shard of its module's weight. Returns the
        on-disk name. The caller is responsible for any config flag that makes
        transformers load it (see :mod:`surgeon.edits.steering`).
        """
        name = self._new_tensor_name(key)
        if name in self.entries or name in self.added:
            raise EditError(f"{key}: tensor {name!r} already exists; assign to it instead")
        weight = name.rpartition(".")[0] + ".weight"
        if weight not in self.entries:
            raise EditError(f"{key}: cannot add {name!r}: its module has no weight {weight!r} to sit beside")
        import torch

        dtype = dtype or self.entries[weight].torch_dtype
        value = torch.as_tensor(value).detach().cpu()
        staged = cast_checked(value, dtype, f"{key} ({name})").contiguous()
        self.staged[name] = staged.clone() if shares_memory(staged, value) else staged
        self.added[name] = self.entries[weight].file
        self._roles = None  # the new tensor gets its role on next lookup
        return name

    def _new_tensor_name(self, key: str) -> str:
        if key in self.entries:
            return key
        base, _, param = key.rpartition(".")
        ref = self.resolve(base)  # the weight's role key
        if ref.view.rows is not None or ref.tied:
            raise EditError(f"{key}: cannot add a parameter to a fused part or tied head")
        return ref.tensor.rpartition(".")[0] + "." + param

    def record(self, kind: str, **details) -> None:
        """Note what an edit did; save() writes these into the manifest."""
        self.edits.append({"kind": kind, **details})

    def stage_file(self, rel: str, data: bytes) -> None:
        """Replace or add a non-tensor file (tokenizer.json, ...) in the output."""
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise EditError(f"{rel}: output file names must stay inside the checkpoint")
        self.files[rel] = data

    def reset(self) -> None:
        """Drop every staged change."""
        self.staged.clear()
        self.patches.clear()
        self.added.clear()
        self.files.clear()
        self.edits.clear()
        self.config.clear()
        self.config.update(json.loads(json.dumps(self.original_config)))
        self._roles = None

    @property
    def changed(self) -> list[str]:
        """Tensors with staged changes: whole values and row patches."""
        return sorted(set(self.staged) | set(self.patches))

    def save(self, out_dir, **kwargs):
        """Write a new checkpoint; see :func:`surgeon.io.save.save`."""
        return save(self, out_dir, **kwargs)

    @contextmanager
    def materialized(self):
        """A directory holding this checkpoint *with* its staged changes.

        Without changes this is the input itself; otherwise a temporary save
        (hard links for untouched shards, so it is cheap). The runtime bridge
        loads models from here, so what you test is exactly what save writes.
        """
        if not (self.staged or self.patches or self.files or self.config != self.original_config):
            yield self.path
            return
        with tempfile.TemporaryDirectory(prefix="surgeon-view-", dir=_link_friendly_tmp(self.path)) as tmp:
            out = Path(tmp) / "ckpt"
            self.save(out, manifest=False, check_tokenizer=False)
            yield out

    def __repr__(self):
        fam = self.architecture.name if self.architecture else "unknown"
        return f"<Checkpoint {self.path} {fam} {len(self.entries)} tensors, {len(self.staged)} staged>"


def _link_friendly_tmp(src: Path) -> str | None:
    """A temp parent on ``src``'s filesystem, so untouched shards hard-link instead of being
    copied (into RAM, when /tmp is tmpfs): the system temp dir if it shares the filesystem,
    else the input's parent if writable, else the system temp dir (copies, but still correct)."""
    tmp = tempfile.gettempdir()
    try:
        if os.stat(tmp).st_dev == os.stat(src).st_dev:
            return None
    except OSError:
        return None
    return str(src.parent) if os.access(src.parent, os.W_OK) else None
