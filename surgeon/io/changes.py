"""The change set: what differs between a checkpoint and its staged edits, or between two checkpoints.

One answer, used by the manifest (:func:`staged_changes`), ``apply --dry-run``,
``surgeon diff``, ``export-adapter`` (:func:`changed_names`), compare's
"params changed" and the fine-tune's write-back (:func:`count_changed`):

* a tensor is named by its *whole-tensor* role (:func:`whole_ref`: the role of
  the stored tensor, not of one part of a fused one);
* values are compared in (out, in) orientation (:func:`oriented`);
* equality is byte equality; two tensors that share the same file bytes
  (hard links) are equal without being read (:func:`same_bytes`);
* storage rounding is one table (:data:`SIGNIFICAND_BITS`, :func:`unit_roundoff`);
* config.json differences are :func:`config_changes`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from typing import TYPE_CHECKING

from surgeon.io.shards import ITEMSIZE, dtype_code, sha256_range, tensor_bytes
from surgeon.io.values import materialize

if TYPE_CHECKING:
    import torch

# significand bits (implicit bit included) of each float storage dtype, by dtype code
SIGNIFICAND_BITS = {"BF16": 8, "F16": 11, "F32": 24, "F64": 53}
# config keys that record who wrote a file, not what the model is
IGNORED_CONFIG = frozenset({"transformers_version", "_name_or_path", "_model_name_or_path"})


def significand_bits(dtype) -> int:
    """Bits of precision of a torch dtype (24 for anything not listed: float32's)."""
    return SIGNIFICAND_BITS.get(dtype_code(dtype), 24)


def unit_roundoff(dtype) -> float:
    """Rounding to ``dtype`` moves a value by at most this times its magnitude."""
    return 2.0 ** -significand_bits(dtype)


def whole_ref(ck, name: str):
    """The role of stored tensor ``name`` as a whole (a fused tensor's own role, not a part's); None if unclassified."""
    if ck.architecture is None:
        return None
    refs = ck.roles.by_tensor.get(name)
    if not refs:
        return None
    return next((r for r in refs if r.view.rows is None), refs[0])


def oriented(ck, name: str, t: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor ``name`` (staged value if any, or ``t``) in (out, in) orientation (Conv1D transposed)."""
    t = ck.stored(name) if t is None else t
    ref = whole_ref(ck, name)
    return ref.view.read(t) if ref is not None and ref.view.rows is None else t


def config_changes(old: dict, new: dict, *, ignore=()) -> dict:
    """config.json keys whose values differ: key -> [old, new] (sorted; ``ignore`` keys left out)."""
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in ignore}


def natural_key(name: str):
    """Sort key that puts layers.2 before layers.10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


def tensor_names(ck) -> list[str]:
    """Every tensor of ``ck``: those in its files, then those its edits added."""
    return list(ck.entries) + [n for n in ck.added if n not in ck.entries]


def same_bytes(a, b, name: str) -> bool:
    """``name`` is unstaged in ``a`` and stored in the very same file bytes as in ``b`` (e.g. a hard link)."""
    if any(name in ck.staged or name in ck.patches for ck in (a, b)) or name not in a.entries or name not in b.entries:
        return False
    ea, eb = a.entries[name], b.entries[name]
    try:
        same_file = os.path.samefile(a.path / ea.file, b.path / eb.file)
    except OSError:
        return False
    return same_file and (ea.start, ea.end) == (eb.start, eb.end)


def staged_changes(ck) -> list[dict]:
    """One manifest record per staged tensor whose bytes really differ from the input (``value`` included).

    ``value`` is the staged tensor, a :class:`surgeon.io.values.Deferred` (made to be hashed and
    dropped: the writer makes it again), or the :class:`surgeon.io.rows.RowPatches` of a row-wise edit
    (hashed by streaming the input's bytes with the patches laid over them).
    """
    out = []
    for name in ck.changed:
        value = ck.staged[name] if name in ck.staged else ck.patches[name]
        added = name in ck.added
        e = None if added else ck.entries[name]
        if name in ck.staged:
            new_sha = hashlib.sha256(tensor_bytes(materialize(value))).hexdigest()
        else:
            new_sha = value.sha256(ck.path / e.file)
        old_sha = None if added else sha256_range(str(ck.path / e.file), e.start, e.end)
        new_shape = list(value.shape)
        if not added and old_sha == new_sha and list(e.shape) == new_shape:
            continue  # staged but identical: not a change
        ref = whole_ref(ck, name)
        out.append({
            "name": name,
            "key": ref.key if ref else None,
            "role": ref.role if ref else None,
            "layer": ref.layer if ref else None,
            "expert": ref.expert if ref else None,
            "file": ck.added[name] if added else e.file,
            "dtype": dtype_code(value.dtype),
            "rows_patched": None if name in ck.staged else value.ranges(),
            "old_shape": None if added else list(e.shape),
            "new_shape": new_shape,
            "old_sha256": old_sha,
            "new_sha256": new_sha,
            "added": added,
            "value": value,
        })
    return out


def changed_names(new, old) -> list[str]:
    """Tensor names that differ between checkpoints ``new`` and ``old`` (added, removed or changed).

    Staged values of ``new`` count; tensors sharing the same file bytes are
    skipped without being read. In natural order (layers.2 before layers.10).
    """
    import torch

    names = []
    for name in sorted(set(tensor_names(new)) | set(old.entries), key=natural_key):
        in_new = name in new.entries or name in new.added
        if name not in old.entries or not in_new:
            names.append(name)
            continue
        if same_bytes(new, old, name):
            continue
        a, b = new.stored(name), old.original(name)
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            names.append(name)
    return names


def count_changed(old: torch.Tensor | None, new: torch.Tensor) -> int:
    """Elements of ``new`` that differ from ``old``; rows beyond ``old``'s (added vocabulary) all count."""
    if old is None:
        return new.numel()
    if tuple(old.shape) != tuple(new.shape):
        rows = min(old.shape[0], new.shape[0])
        return int((new[:rows] != old[:rows]).sum()) + (new.numel() - new[:rows].numel())
    return int((new != old).sum())


def elements_changed(ck) -> int:
    """Elements changed by ``ck``'s staged edits against its input files."""
    return sum(count_changed(None if n in ck.added else ck.original(n), ck.stored(n)) for n in ck.changed)


LIST_LIMIT = 24  # tensor lines a listing prints before "… N more"


def added_zeros(c: dict) -> bool:
    """A manifest record of an added all-zero tensor (a bias a config flag needs): its sha256 is that of zeros."""
    size = math.prod(c["new_shape"]) * ITEMSIZE.get(c["dtype"], 0)
    return (bool(c.get("added")) and 0 < size <= 1 << 24
            and c["new_sha256"] == hashlib.sha256(bytes(size)).hexdigest())


def listing(rows: list[dict], line, zero) -> list[str]:
    """Lines for changed-tensor records (``key``/``name``), for a terminal: in layer order (layers.2 before
    layers.10), those ``zero`` says are all zero summed up in one line per role, the rest cut at LIST_LIMIT."""
    rows = sorted(rows, key=lambda r: natural_key(r["key"] or r["name"]))
    zeros: dict[str, list[int]] = {}
    shown = []
    for r in rows:
        if zero(r):
            name = r["key"] or r["name"]
            m = re.match(r"layers\.(\d+)\.(.+)", name)
            zeros.setdefault(m.group(2) if m else name, []).append(int(m.group(1)) if m else -1)
        else:
            shown.append(line(r))
    if len(shown) > LIST_LIMIT:
        shown = shown[:LIST_LIMIT] + [f"  … {len(shown) - LIST_LIMIT} more (--json for all)"]
    for role, layers in zeros.items():
        where = f" in layers {spans(layers)}" if layers[0] >= 0 else ""
        shown.append(f"  {len(layers)} × {role}: all zero{where} (no numerical change)")
    return shown


def spans(ns: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out, ns = [], sorted(set(ns))
    start = prev = ns[0]
    for n in ns[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if n is not None:
            start = prev = n
    return ", ".join(out)
