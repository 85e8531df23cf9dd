"""New vocabulary: tokenizer entries plus embedding (and head) rows, in one edit.

The tokenizer is changed only through transformers/tokenizers (``add_tokens``,
``save_pretrained``), so every new token encodes to exactly one id after a
reload. New ids come after the old ones; the embedding (and an untied head)
grows by the rows they need, config ``vocab_size`` follows.

Initialisation of a new row:

* ``"subtoken_mean"`` (default): the mean of the rows of the pieces the old
  tokenizer split the token into (with repetition), for the embedding and, if
  untied, the head. The new token starts out meaning roughly what its spelling did.
* ``("copy", "token")``: the rows of an existing single token.
* ``"vocab_mean"``: the mean of all old rows (Hewitt 2021, "Initializing New
  Word Embeddings for Pretrained Language Models"). Its logit is then the mean
  of the old logits, so by Jensen each new token takes at most 1/V of the old
  softmax mass: KL(original ‖ edited) ≤ log(1 + k/V) for k new tokens.

Padding (``pad_to_multiple_of``) rows are vocabulary means, not zeros: a zero
row has logit 0, which can sit far above the average logit; the mean row
inherits the 1/V bound above, so padding barely moves the distribution either.
Padding rows get no tokenizer entry.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from surgeon.errors import EditError

INITS = ("subtoken_mean", "vocab_mean", "copy")
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


@dataclass
class TokensAdded:
    """What :func:`add_tokens` did (also written to the manifest)."""

    added: dict[str, int]  # new token -> its id
    skipped: dict[str, int]  # already a single token -> its existing id
    pieces: dict[str, list[int]]  # new token -> old ids it used to encode to
    init: str
    rows: tuple[int, int]  # embedding rows before, after
    padding: int  # rows added beyond the tokenizer's ids
    files: list[str] = field(default_factory=list)  # tokenizer files staged


def add_tokens(ck, tokens, init="subtoken_mean", pad_to_multiple_of: int | None = None) -> TokensAdded:
    """Add ``tokens`` to the tokenizer and their rows to ``embed`` / ``lm_head``; see the module doc.

    Tokens that already encode to a single id are skipped (and reported):
    registering them as added tokens would change how surrounding text splits.
    """
    tokens = _check_tokens(tokens)
    kind, copy_of = _check_init(init)
    if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
        raise EditError(f"pad_to_multiple_of: expected a positive integer, got {pad_to_multiple_of!r}")
    with tempfile.TemporaryDirectory(prefix="surgeon-tok-") as tmp:
        src = _tokenizer_dir(ck, Path(tmp) / "in")
        tok = _load_tokenizer(src)
        old_len = len(tok)
        skipped, pieces = {}, {}
        for t in tokens:
            ids = tok.encode(t, add_special_tokens=False)
            if len(ids) == 1:
                skipped[t] = ids[0]
            elif not ids:
                raise EditError(f"token {t!r}: the tokenizer encodes it to nothing (normalised away?)")
            else:
                pieces[t] = ids
        copy_id = None
        if kind == "copy":
            ids = tok.encode(copy_of, add_special_tokens=False)
            if len(ids) != 1:
                raise EditError(f"init copy of {copy_of!r}: not a single token (encodes to {len(ids)} ids {ids})")
            copy_id = ids[0]
        added = {}
        if pieces:
            tok.add_tokens(list(pieces))
            for t in pieces:
                ids = tok.encode(t, add_special_tokens=False)
                if len(ids) != 1:
                    raise EditError(f"token {t!r}: still encodes to {len(ids)} ids after add_tokens")
                added[t] = ids[0]
            files = _stage_changed_files(ck, tok, src, Path(tmp) / "out")
        else:
            files = []
        del tok  # Gemma's 262k-entry tokenizer holds ~0.5 GB; free it before the embedding is copied
    rows = _grow_rows(ck, added, pieces, kind, copy_id, old_len, pad_to_multiple_of)
    result = TokensAdded(added, skipped, {t: pieces[t] for t in added}, kind if kind != "copy" else f"copy:{copy_of}",
                         rows, rows[1] - max([rows[0], *(i + 1 for i in added.values())]), files)
    ck.record("add_tokens", added=added, skipped=skipped, pieces=result.pieces, init=result.init,
              rows=list(rows), padding=result.padding, pad_to_multiple_of=pad_to_multiple_of, files=files)
    return result


# ------------------------------------------------------------------ checks


def _check_tokens(tokens) -> list[str]:
    if isinstance(tokens, str):
        tokens = [tokens]
    out = []
    for t in tokens:
        if not isinstance(t, str) or not t:
            raise EditError(f"token {t!r}: expected a non-empty string")
        if t not in out:
            out.append(t)
    if not out:
        raise EditError("add_tokens: no tokens given")
    return out


def _check_init(init) -> tuple[str, str | None]:
    if isinstance(init, str) and init in ("subtoken_mean", "vocab_mean"):
        return init, None
    if isinstance(init, str) and init.startswith("copy:"):  # CLI/--param friendly spelling
        return "copy", init[len("copy:"):]
    if isinstance(init, (tuple, list)) and len(init) == 2 and init[0] == "copy" and isinstance(init[1], str):
        return "copy", init[1]
    raise EditError(f"init {init!r}: expected 'subtoken_mean', 'vocab_mean' or ('copy', 'token')")


# --------------------------------------------------------------- tokenizer


def _tokenizer_dir(ck, where: Path) -> Path:
    """A directory holding the checkpoint's current tokenizer (staged files win), weights left out."""
    import json

    where.mkdir(parents=True)
    for p in ck.path.iterdir():
        if p.is_file() and not p.name.endswith(_WEIGHTS) and p.name not in ck.files and p.name != "config.json":
            os.symlink(p, where / p.name)
    for rel, data in ck.files.items():
        (where / rel).parent.mkdir(parents=True, exist_ok=True)
        (where / rel).write_bytes(data)
    (where / "config.json").write_text(json.dumps(ck.config))
    return where


def _load_tokenizer(d: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(d))
    except Exception as e:  # transformers raises many kinds
        raise EditError(f"{d.name}: cannot load the tokenizer "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def _stage_changed_files(ck, tok, src: Path, out: Path) -> list[str]:
    """save_pretrained, then stage every file whose bytes differ from the current one."""
    out.mkdir()
    tok.save_pretrained(str(out))
    staged = []
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(out).as_posix()
        new = p.read_bytes()
        old = src / rel
        if rel == "config.json" or (old.is_file() and old.read_bytes() == new):
            continue
        ck.stage_file(rel, new)
        staged.append(rel)
    return staged


# -------------------------------------------------------------------- rows


def _grow_rows(ck, added, pieces, kind, copy_id, old_len, pad_to_multiple_of) -> tuple[int, int]:
    """Append the new rows of embed (and an untied head) and update config vocab_size.

    Row-range reads and :meth:`Checkpoint.set_rows`: only the rows an initialisation
    reads and the new rows are held (a 128k × 8k embedding is never in memory);
    save() copies the old rows across and appends the new ones.
    """
    old_rows = ck.shape("embed")[0]
    need = max([old_rows, *(i + 1 for i in added.values())])
    rows = need
    if pad_to_multiple_of:
        rows = -(-need // pad_to_multiple_of) * pad_to_multiple_of
    if rows == old_rows and not added:
        return old_rows, old_rows
    keys = ["embed"] if ck.tied else ["embed", "lm_head"]
    if not ck.tied and "lm_head.bias" in ck:
        keys.append("lm_head.bias")
    real = min(old_len, old_rows)  # rows the old tokenizer can emit; the rest may be junk padding
    for key in keys:
        if ck.shape(key)[0] != old_rows:
            raise EditError(f"{key}: {ck.shape(key)[0]} rows but embed has {old_rows}; cannot grow them together")
        dtype = ck.dtype(key)
        mean = _mean_rows(ck, key, real)
        new = mean.to(dtype).expand(rows - old_rows, *mean.shape).clone()
        for t, i in added.items():
            if kind == "vocab_mean":
                row = mean
            else:
                row = _row(ck, key, pieces[t] if kind == "subtoken_mean" else [copy_id]).mean(0)
            if i >= old_rows:
                new[i - old_rows] = row.to(dtype)
            else:  # an id inside the old padding rows: that row is overwritten
                ck.set_rows(key, i, row[None])
        if len(new):
            ck.set_rows(key, old_rows, new)
        del new
    vkey = ck.architecture.config.get("vocab_size", "vocab_size")
    ck.architecture.own_config(ck.config)[vkey] = rows  # a wrapper's vocabulary lives in its text sub-config
    return old_rows, rows


def _row(ck, key: str, ids: list[int]) -> torch.Tensor:
    """Rows ``ids`` of ``key`` (with repetition), float32, each read on its own."""
    return torch.stack([ck.get(key, rows=slice(i, i + 1))[0] for i in ids])


def _mean_rows(ck, key: str, n: int, chunk: int = 16384) -> torch.Tensor:
    """Mean of the first ``n`` rows of ``key`` in float32, read a chunk of rows at a time."""
    total = None
    for s in range(0, n, chunk):
        part = ck.get(key, rows=slice(s, min(n, s + chunk))).sum(0)
        total = part if total is None else total + part
    return total / n
