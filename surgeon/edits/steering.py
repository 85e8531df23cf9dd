"""Steering vectors: a direction in the residual stream, found from contrastive prompts, tried, baked.

* :func:`extract` — the direction that separates paired prompts at the residual
  stream after layer L (hook point ``layers.L``): the difference of the pair
  means (Rimsky et al. 2023, "Steering Llama 2 via Contrastive Activation
  Addition", CAA) or the first principal direction of the paired differences
  (Zou et al. 2023, "Representation Engineering", as in repeng).
* :func:`steer` — add α·v at run time, through :meth:`Runtime.patch`; nothing is written.
* :func:`surgeon.edits.bake.bake_additive` — the same addition as a bias on ``attn.o`` or
  ``mlp.down``, with the config flag transformers needs to load that bias.
* :func:`surgeon.edits.bake.ablate` — directional ablation (Arditi et al. 2024, "Refusal in
  language models is mediated by a single direction"): every matrix that
  writes into the residual stream loses its component along r, W ← W − r rᵀ W.

Where the addition happens matters. ``site="residual"`` adds to the output of
decoder layer L, the quantity the direction was measured on. A bias on
``mlp.down`` adds to the output of that projection: for pre-norm families
(Llama, Qwen, GPT-2 ...) that output *is* what layer L adds to the residual,
so the bias equals ``site="residual"``; for sandwich-norm families (Gemma-2/3,
OLMo-2) it is normalised by ``norm.post_mlp`` first, so it is not a residual
addition at all — there :func:`bake_additive` refuses ``site="residual"`` and
:func:`steer` with ``site="mlp.down"`` / ``"attn.o"`` is the exact run-time
equivalent of the baked bias.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from surgeon.errors import SurgeonError
from surgeon.runtime import Runtime, load

SITES = ("residual", "attn.o", "mlp.down")
METHODS = ("mean_diff", "pca")
POSITIONS = ("last", "mean")
_META_KEY = "surgeon.steering"


class SteeringError(SurgeonError):
    """A steering vector file or request is invalid (bad file, wrong model, bad layer)."""


# --------------------------------------------------------------------------- the vector


@dataclass
class SteeringVector:
    """A unit direction at one layer, with the statistics needed to use it.

    ``vector`` (= ``direction * scale``) is CAA's steering vector: α = 1 adds
    the mean paired difference. ``residual_norm`` (mean ‖h‖ at the layer over
    the prompts) tells how large an addition is relative to the stream.
    ``separation``: share of pairs whose difference points along the direction.
    ``explained``: share of the paired differences' energy along it.
    """

    direction: torch.Tensor  # (hidden,), unit norm, float32
    layer: int
    scale: float
    method: str = "mean_diff"
    position: str = "last"
    residual_norm: float = float("nan")
    n_pairs: int = 0
    separation: float = float("nan")
    explained: float = float("nan")
    model: dict = field(default_factory=dict)  # model_type, hidden_size, num_layers of the source

    @property
    def vector(self) -> torch.Tensor:
        return self.direction * self.scale

    def save(self, path: str | Path) -> Path:
        """Write as a safetensors file: tensor ``direction`` plus JSON metadata (never pickle)."""
        from safetensors.torch import save_file

        meta = {k: v for k, v in asdict(self).items() if k != "direction"}
        path = Path(path)
        save_file({"direction": self.direction.detach().float().contiguous()}, str(path),
                  metadata={_META_KEY: json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = (f.metadata() or {}).get(_META_KEY)
                if meta is None or "direction" not in f.keys():
                    raise SteeringError(f"{path}: not a surgeon steering vector "
                                        f"(no {_META_KEY} metadata / direction tensor)")
                direction = f.get_tensor("direction").float()
        except SteeringError:
            raise
        except Exception as e:  # safetensors raises its own errors for a bad header
            raise SteeringError(f"{path}: cannot read as safetensors ({str(e).splitlines()[0][:120]})") from None
        doc = json.loads(meta)
        if direction.dim() != 1 or not torch.isfinite(direction).all():
            raise SteeringError(f"{path}: direction must be a finite 1-D tensor, got shape {tuple(direction.shape)}")
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc and k != "direction"}
        return cls(direction=direction, **known)

    def check(self, ck) -> None:
        """Refuse a vector made for a model of another width or depth."""
        hidden = _hidden_size(ck)
        if self.direction.numel() != hidden:
            raise SteeringError(f"steering vector has {self.direction.numel()} dims but {ck.path} "
                                f"has hidden size {hidden}")
        _check_layer(ck, self.layer)


# --------------------------------------------------------------------------- extraction


@torch.no_grad()
def extract(runtime, positive: list[str], negative: list[str], layer: int, *, method: str = "mean_diff",
            position: str = "last", batch_size: int = 16) -> SteeringVector:
    """The direction from ``negative`` to ``positive`` prompts in the residual after ``layer``.

    Pairs are matched by index. ``position="last"`` reads the last token of
    each prompt — in a causal model the only position that has seen the
    whole prompt, and the one CAA and repeng read; ``"mean"`` averages the
    prompt's tokens (padding excluded), which suits prompts whose difference
    is spread over the text but dilutes it with shared tokens.
    ``method="pca"`` takes the top right singular vector of the paired
    differences *without centring*: centring would subtract the mean
    difference, which is the signal (RepE shuffles pair order for the same
    reason); its sign is chosen to agree with the mean difference.
    """
    rt = runtime if isinstance(runtime, Runtime) else load(runtime)
    if method not in METHODS:
        raise SteeringError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    if position not in POSITIONS:
        raise SteeringError(f"position {position!r}: choose one of {', '.join(POSITIONS)}")
    if len(positive) != len(negative) or not positive:
        raise SteeringError(f"need matched prompt pairs: got {len(positive)} positive and {len(negative)} negative")
    _check_layer(rt.ck, layer)
    h_pos = _residuals(rt, list(positive), layer, position, batch_size)
    h_neg = _residuals(rt, list(negative), layer, position, batch_size)
    diffs = h_pos - h_neg  # (pairs, hidden)
    mean = diffs.mean(0)
    if method == "mean_diff":
        direction = mean / mean.norm().clamp_min(1e-12)
    else:
        _, s, vh = torch.linalg.svd(diffs, full_matrices=False)
        direction = vh[0] if float(vh[0] @ mean) >= 0 else -vh[0]
    along = diffs @ direction
    energy = float(diffs.pow(2).sum())
    return SteeringVector(
        direction=direction.contiguous(),
        layer=layer,
        scale=float(mean @ direction),
        method=method,
        position=position,
        residual_norm=float(torch.cat([h_pos, h_neg]).norm(dim=-1).mean()),
        n_pairs=len(positive),
        separation=float((along > 0).float().mean()),
        explained=float(along.pow(2).sum()) / energy if energy > 0 else float("nan"),
        model={"model_type": rt.ck.config.get("model_type"), "hidden_size": _hidden_size(rt.ck),
               "num_layers": rt.ck.num_layers},
    )


def _residuals(rt, texts: list[str], layer: int, position: str, batch_size: int) -> torch.Tensor:
    point = f"layers.{layer}"
    out = []
    for i in range(0, len(texts), batch_size):
        enc = rt.encode(texts[i : i + batch_size])
        with rt.capture([point]) as store:
            rt.model(**enc)
        h = store[point].float().cpu()
        if position == "last":  # left padding: position -1 is every prompt's last token
            out.append(h[:, -1])
        else:
            m = enc["attention_mask"].unsqueeze(-1).to(h.device, h.dtype)
            out.append((h * m).sum(1) / m.sum(1))
    return torch.cat(out).cpu()


# --------------------------------------------------------------------------- run time


@contextmanager
def steer(runtime, direction, layer: int | None = None, alpha: float = 1.0, *, site: str = "residual"):
    """Add ``alpha`` × the vector at every position while the context is open.

    ``direction``: a :class:`SteeringVector` (α is then in units of its mean
    paired difference, CAA's convention) or a raw (hidden,) tensor added as is.
    ``site``: ``"residual"`` (output of layer L), or ``"mlp.down"`` /
    ``"attn.o"`` (output of that projection: exactly what a baked bias does).
    """
    vec, layer = _vector(direction, layer)
    rt = runtime
    _check_layer(rt.ck, layer)
    if vec.numel() != _hidden_size(rt.ck):
        raise SteeringError(f"vector has {vec.numel()} dims; the model's hidden size is {_hidden_size(rt.ck)}")
    point = _site_point(rt.ck, layer, site)
    add = alpha * vec

    def shift(h):  # the layer's device, which under a device_map need not be the inputs'
        return h + add.to(h.device, h.dtype)

    with rt.patch(point, shift):
        yield rt


def _site_point(ck, layer: int, site: str) -> str:
    if site == "residual":
        return f"layers.{layer}"
    if site not in SITES:
        raise SteeringError(f"site {site!r}: choose one of {', '.join(SITES)}")
    key = f"layers.{layer}.{site}"
    if not _has(ck, key):
        raise SteeringError(f"{key}: no such tensor in this {ck.architecture.name} checkpoint")
    return key


# --------------------------------------------------------------------------- measurement


@torch.no_grad()
def written_projection(runtime, texts: list[str], direction, layers) -> dict:
    """How much each layer writes along r: RMS of rᵀ(h_out − h_in) over real tokens, and ‖h_out − h_in‖.

    ``"embed"`` in ``layers`` measures the residual entering layer 0 (token
    and position embeddings). The ratio of the two is ~1/√hidden for a
    direction the layer ignores and ~0 after :func:`ablate`.
    """
    r = _unit(direction).cpu()
    points = []
    for layer in layers:
        points += ["layers.0.input"] if layer == "embed" else [f"layers.{layer}.input", f"layers.{layer}"]
    enc = runtime.encode(list(texts))
    with runtime.capture(points) as store:
        runtime.model(**enc)
    mask = enc["attention_mask"].bool().cpu()
    out = {}
    for layer in layers:
        if layer == "embed":
            w = store["layers.0.input"].float().cpu()
        else:
            w = store[f"layers.{layer}"].float().cpu() - store[f"layers.{layer}.input"].float().cpu()
        w = w[mask]
        along = (w @ r.float()).pow(2).mean().sqrt().item()
        total = w.norm(dim=-1).pow(2).mean().sqrt().item()
        out[layer] = {"along": along, "norm": total, "ratio": along / total if total else float("nan")}
    return out


# --------------------------------------------------------------------------- helpers


def _vector(direction, layer):
    if isinstance(direction, SteeringVector):
        return direction.vector.float(), direction.layer if layer is None else layer
    if layer is None:
        raise SteeringError("a raw direction tensor needs layer=")
    v = torch.as_tensor(direction).detach().float().cpu()
    if v.dim() != 1:
        raise SteeringError(f"direction must be 1-D (hidden,), got shape {tuple(v.shape)}")
    return v, layer


def _unit(direction) -> torch.Tensor:
    v = direction.direction if isinstance(direction, SteeringVector) else torch.as_tensor(direction)
    v = v.detach().float().cpu().reshape(-1)
    n = v.norm()
    if not math.isfinite(float(n)) or float(n) == 0:
        raise SteeringError("direction has zero or non-finite norm")
    return v / n


def _has(ck, key: str) -> bool:
    """Role lookup without the did-you-mean search that a miss in ``key in ck`` pays for."""
    return key in ck.roles.by_key


def _hidden_size(ck) -> int:
    arch = ck.architecture
    if arch is not None:
        h = ck.config.get(arch.config["hidden_size"])
        if h:
            return int(h)
    return int(ck.shape("embed")[1])


def _check_layer(ck, layer) -> None:
    n = ck.num_layers
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise SteeringError(f"layer {layer!r}: this checkpoint has layers 0..{n - 1}")
