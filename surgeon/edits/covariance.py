"""Key covariance for rank-one edits: C = E[k kᵀ] at the input of ``mlp.down``.

ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT",
Eq. 2) treats ``mlp.down`` as a linear associative memory W K ≈ V and inserts
a new key/value pair with the least disturbance to the keys it already stores.
"Disturbance" is measured under the uncentred second moment C of the keys
over ordinary text, so the update direction is u = C⁻¹k*, not k*. C is a
property of (model weights up to that layer, text), so it is computed once
and cached on disk.

Cost: only layers 0..l run (the forward stops with a private exception as soon
as layer l's keys are captured), in batches of packed token rows; without a
runtime to reuse, only layers 0..l are loaded (``load(ck, layers=l + 1)``).
kᵀk is accumulated in float64 on the device layer l runs on and moved to the
CPU once.

Cache key (sha256), chosen over shard headers + config because a header says
nothing about the values (a fine-tune with identical shapes and offsets would
hit a stale C) and misses staged edits: the config, the raw bytes of every
tensor that can influence layer l's keys (everything below layer l, layer l
except ``mlp.down``, top-level tensors except ``lm_head``/``final_norm``;
unclassified tensors conservatively included), and the exact token ids used
(so the corpus, the tokenizer and the token count are all part of the key).
Hashing reads those tensors once (about 0.1 s for SmolLM2 at layer 6).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from surgeon.data import neutral_paragraphs
from surgeon.errors import EditError
from surgeon.io.atomic import atomic_file, cache_dir
from surgeon.runtime import bos_id, load

_VERSION = "c1"  # bump when the computation changes


@dataclass
class Covariance:
    """C for one (model, layer, text): ``matrix`` is (d_ff, d_ff) float64."""

    matrix: torch.Tensor
    layer: int
    tokens: int  # keys averaged
    key: str  # cache key (sha256 hex)
    seconds: float  # time spent computing it (0 when loaded from the cache)
    cached: bool  # loaded from the disk cache
    source: str = "corpus"

    def describe(self) -> dict:
        """What the manifest records about C."""
        return {"source": self.source, "tokens": self.tokens, "key": self.key[:16], "cached": self.cached}


# --------------------------------------------------------------------- corpus


def corpus_rows(tokenizer, tokens: int, seq_len: int = 128, texts: list[str] | None = None) -> torch.Tensor:
    """Token rows (n, seq_len) packed from ``texts`` (default: the fit part of the corpus).

    At most ``tokens`` tokens (fewer if the text is shorter: the returned size
    is the truth). Each row starts with BOS where the tokenizer adds one, as the
    model sees text in use.
    """
    texts = neutral_paragraphs("fit") if texts is None else texts
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    bos = bos_id(tokenizer)
    body = seq_len - (bos is not None)
    n = min(tokens, len(ids)) // body
    if n == 0:
        raise ValueError(f"corpus too short: {len(ids)} tokens, need at least {body} for one row")
    rows = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    if bos is not None:
        rows = torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)
    return rows


# ---------------------------------------------------------------------- cache


def cache_key(ck, layer: int, rows: torch.Tensor) -> str:
    """sha256 of what determines C at ``layer``: config, upstream tensor bytes, token ids."""
    h = hashlib.sha256(_VERSION.encode())
    cfg = {k: v for k, v in ck.config.items() if k not in ("_name_or_path", "transformers_version")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(f"layer={layer}".encode())
    for name in sorted(set(ck.entries) | set(ck.added)):
        if _influences(ck, name, layer):
            t = ck.stored(name).contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(rows.to(torch.int64).numpy().tobytes())
    h.update(str(tuple(rows.shape)).encode())
    return h.hexdigest()


def _influences(ck, name: str, layer: int) -> bool:
    refs = ck.roles.by_tensor.get(name)
    if not refs:
        return True  # unclassified: be conservative
    for r in refs:
        if r.layer is None:
            if r.role not in ("lm_head", "final_norm"):
                return True
        elif r.layer < layer or (r.layer == layer and r.role != "mlp.down"):
            return True
    return False


def cache_path(key: str) -> Path:
    return cache_dir() / "covariance" / f"{key}.safetensors"


# ---------------------------------------------------------------- computation


class _Stop(Exception):
    """Raised from the hook once layer l's keys are captured: nothing above it needs to run."""


def key_covariance(ck, layer: int, *, tokens: int = 20_000, seq_len: int = 128, batch_size: int = 8,
                   runtime=None, texts: list[str] | None = None, use_cache: bool = True,
                   progress: bool = True) -> Covariance:
    """C = E[k kᵀ] of the keys entering ``layers.{layer}.mlp.down``, over neutral text.

    Loaded from ``$SURGEON_CACHE/covariance/`` when the same weights and tokens
    were seen before; otherwise computed (running layers 0..layer only) and
    stored. ``runtime``: an already loaded :class:`surgeon.runtime.Runtime` of
    ``ck`` (saves a model load); without one, only layers 0..layer are built.
    """
    from tqdm.auto import tqdm

    if not 0 <= layer < ck.num_layers:
        raise EditError(f"layers.{layer}.mlp.down: layer out of range (model has {ck.num_layers} layers)")
    rt = runtime if runtime is not None else load(ck, layers=layer + 1)
    rows = corpus_rows(rt.tokenizer, tokens, seq_len, texts)
    key = cache_key(ck, layer, rows)
    path = cache_path(key)
    if use_cache and path.is_file():
        from safetensors.torch import load_file

        m = load_file(str(path))["covariance"]
        return Covariance(m, layer, int(rows.numel()), key, 0.0, True)

    t0 = time.perf_counter()
    point = f"layers.{layer}.mlp.down.input"
    acc = None
    count = 0

    def grab(k):
        nonlocal acc
        k = k.reshape(-1, k.shape[-1]).float()
        kk = (k.T @ k).double()
        acc = kk if acc is None else acc + kk
        raise _Stop

    bar = tqdm(total=int(rows.numel()), unit="tok", desc=f"C at layers.{layer}.mlp.down", disable=not progress,
               leave=False)
    with torch.no_grad(), rt.patch(point, grab):
        for i in range(0, len(rows), batch_size):
            x = rows[i : i + batch_size].to(rt.device)
            try:
                rt.model(input_ids=x, use_cache=False)
            except _Stop:
                pass
            else:  # pragma: no cover - the hook always fires
                raise EditError(f"{point}: hook did not fire; cannot compute C")
            count += x.numel()
            bar.update(x.numel())
    bar.close()
    matrix = (acc / count).cpu()
    seconds = time.perf_counter() - t0
    if use_cache:
        _store(path, matrix, {"layer": str(layer), "tokens": str(count), "seq_len": str(seq_len),
                              "model": str(ck.path), "seconds": f"{seconds:.2f}"})
    return Covariance(matrix, layer, count, key, seconds, False)


def _store(path: Path, matrix: torch.Tensor, meta: dict) -> None:
    """Atomic write: a reader never sees a half-written C."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({"covariance": matrix.contiguous()}, str(tmp), metadata=meta)
