"""Architectural roles: what every tensor of a checkpoint *is*.

One vocabulary everywhere (API, CLI, JSON, manifests, errors):

* top level: ``embed``, ``pos_embed``, ``lm_head``, ``final_norm``
* per layer: ``layers.{L}.{role}`` with roles ``attn.q|k|v|o``, ``attn.q_norm``,
  ``attn.k_norm``, ``mlp.gate|up|down``, ``mlp.router``, and norms named by
  what they do: ``norm.pre_attn``, ``norm.post_attn``, ``norm.pre_mlp``,
  ``norm.post_mlp``
* MoE experts: ``layers.{L}.experts.{E}.mlp.down``
* a bias (or any parameter other than ``weight``) appends ``.bias``.

The mapping from on-disk names is data: one JSON file per family in
``surgeon/architectures`` (the idea of mergekit's architecture files). Fused
tensors are exposed as their parts through :class:`View` objects that read a
slice and write it back into the whole; Conv1D matrices (GPT-2) are shown in
(out, in) orientation like every other matrix.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import torch

from .errors import RoleError, UnknownArchitecture

TOP_ROLES = ("embed", "pos_embed", "lm_head", "final_norm")
LAYER_ROLES = (
    "attn.q", "attn.k", "attn.v", "attn.o", "attn.q_norm", "attn.k_norm", "attn.qkv",
    "mlp.gate", "mlp.up", "mlp.down", "mlp.gate_up", "mlp.router",
    "mlp.shared.gate", "mlp.shared.up", "mlp.shared.down", "mlp.shared.router",
    "norm.pre_attn", "norm.post_attn", "norm.pre_mlp", "norm.post_mlp",
)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Architecture:
    """One family's table, as read from ``surgeon/architectures/<name>.json``."""

    name: str
    doc: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    tie_default: bool
    config: dict[str, str]  # num_layers / hidden_size / vocab_size / tie -> config.json key
    top: dict[str, str]  # role -> module path
    layer: str  # module path of layer {layer}
    roles: dict[str, str]  # layer role -> module path inside the layer
    fused: dict[str, dict] = field(default_factory=dict)
    experts: dict | None = None
    derived: dict[str, str] = field(default_factory=dict)
    transposed: bool = False  # Conv1D: 2-D layer weights stored (in, out)

    @classmethod
    def from_json(cls, name: str, doc: dict) -> Architecture:
        return cls(
            name=name,
            doc=doc.get("doc", ""),
            model_types=tuple(doc["model_types"]),
            architectures=tuple(doc["architectures"]),
            tie_default=bool(doc["tie_default"]),
            config=dict(doc["config"]),
            top=dict(doc["top"]),
            layer=doc["layer"],
            roles=dict(doc["roles"]),
            fused=dict(doc.get("fused", {})),
            experts=doc.get("experts"),
            derived=dict(doc.get("derived", {})),
            transposed=bool(doc.get("transposed", False)),
        )

    def value(self, config: dict, expr: str):
        """Evaluate a size expression such as ``num_key_value_heads * head_dim``.

        Names come from config.json, falling back to this table's ``derived``
        formulas (Phi-3's config has no head_dim). Only names, integers, the
        four arithmetic operators and ``or`` are allowed.
        """
        return _eval(ast.parse(expr, mode="eval").body, config, self.derived, expr)

    def num_layers(self, config: dict) -> int | None:
        return config.get(self.config["num_layers"])

    def tied(self, config: dict) -> bool:
        return bool(config.get(self.config["tie"], self.tie_default))


def _eval(node, config, derived, expr):
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        if config.get(node.id) is not None:
            return config[node.id]
        if node.id in derived:
            return _eval(ast.parse(derived[node.id], mode="eval").body, config, derived, expr)
        return None
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
        for v in node.values:
            r = _eval(v, config, derived, expr)
            if r:
                return r
        return None
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, config, derived, expr), _eval(node.right, config, derived, expr)
        if a is None or b is None:
            return None
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.FloorDiv: lambda: a // b}
        if type(node.op) in ops:
            return ops[type(node.op)]()
    raise ValueError(f"unsupported size expression {expr!r}")


@lru_cache(maxsize=None)
def architectures() -> dict[str, Architecture]:
    """All bundled families, keyed by file name."""
    out = {}
    for f in sorted(resources.files("surgeon.architectures").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".json"):
            name = f.name[: -len(".json")]
            out[name] = Architecture.from_json(name, json.loads(f.read_text()))
    return out


def supported_model_types() -> list[str]:
    return sorted(mt for a in architectures().values() for mt in a.model_types)


def find_architecture(config: dict) -> Architecture:
    """Pick the table for a config.json by ``model_type`` (then ``architectures``)."""
    mt = config.get("model_type")
    for arch in architectures().values():
        if mt in arch.model_types:
            return arch
    for arch in architectures().values():
        if set(config.get("architectures") or ()) & set(arch.architectures):
            return arch
    raise UnknownArchitecture(
        f"unknown architecture: model_type {mt!r} ({', '.join(config.get('architectures') or []) or 'no architectures'}); "
        f"supported: {', '.join(supported_model_types())}; tensors are still reachable by their raw names"
    )


# --------------------------------------------------------------------------- views


@dataclass(frozen=True)
class View:
    """How a role's tensor sits inside the stored tensor.

    ``transposed``: stored as (in, out) (Conv1D) — shown as (out, in).
    ``rows``: for a part of a fused tensor, the rows (after orientation) that
    belong to it; ``None`` for the whole tensor.
    """

    transposed: bool = False
    rows: tuple[int, int] | torch.Tensor | None = None

    def read(self, stored: torch.Tensor) -> torch.Tensor:
        t = stored.T if (self.transposed and stored.dim() == 2) else stored
        if self.rows is None:
            return t
        if isinstance(self.rows, tuple):
            return t[self.rows[0] : self.rows[1]]
        return t[self.rows]

    def write(self, stored: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The stored tensor with this view replaced by ``value`` (stored orientation)."""
        flip = self.transposed and stored.dim() == 2
        if self.rows is None:
            return value.T.contiguous() if flip else value
        whole = (stored.T if flip else stored).clone()
        if isinstance(self.rows, tuple):
            whole[self.rows[0] : self.rows[1]] = value
        else:
            whole[self.rows] = value
        return whole.T.contiguous() if flip else whole

    def shape(self, stored_shape: tuple[int, ...]) -> tuple[int, ...]:
        s = tuple(reversed(stored_shape)) if (self.transposed and len(stored_shape) == 2) else tuple(stored_shape)
        if self.rows is None:
            return s
        n = self.rows[1] - self.rows[0] if isinstance(self.rows, tuple) else len(self.rows)
        return (n,) + s[1:]


@dataclass(frozen=True)
class RoleRef:
    """One addressable thing: a role key bound to a stored tensor (or a view of it)."""

    key: str  # e.g. "layers.3.mlp.down.bias"
    role: str  # e.g. "mlp.down"
    param: str  # "weight", "bias", ...
    tensor: str  # on-disk tensor name
    layer: int | None = None
    expert: int | None = None
    view: View = View()
    fused_in: str | None = None  # for a part: the fused role it lives in (e.g. "attn.qkv")
    tied: bool = False  # lm_head resolved to the embedding it shares


def role_key(role: str, param: str, layer: int | None = None, expert: int | None = None) -> str:
    key = role if layer is None else f"layers.{layer}.{role}" if expert is None else f"layers.{layer}.experts.{expert}.{role}"
    return key if param == "weight" else f"{key}.{param}"


class RoleTable:
    """Every role key of one checkpoint, and the role(s) of every tensor."""

    def __init__(self, arch: Architecture, config: dict, tensor_names):
        self.arch = arch
        self.config = config
        self.by_key: dict[str, RoleRef] = {}
        self.by_tensor: dict[str, list[RoleRef]] = {}
        self.unclassified: list[str] = []
        self._fused_cache: dict[str, tuple] = {}
        names = list(tensor_names)
        self._layer_re = re.compile("^" + re.escape(arch.layer).replace(re.escape("{layer}"), r"(\d+)") + r"\.(.+)\.([^.]+)$")
        self._expert_re = None
        if arch.experts:
            pat = re.escape(arch.experts["module"]).replace(re.escape("{expert}"), r"(\d+)")
            self._expert_re = re.compile("^" + pat + r"\.(.+)$")
        layer_modules = {m: r for r, m in arch.roles.items()}
        fused_modules = {spec["module"]: r for r, spec in arch.fused.items()}
        expert_modules = {m: r for r, m in (arch.experts or {}).get("roles", {}).items()}
        top_modules = {m: r for r, m in arch.top.items()}
        for name in names:
            refs = self._classify(name, top_modules, layer_modules, fused_modules, expert_modules)
            if not refs:
                self.unclassified.append(name)
            for ref in refs:
                self.by_key[ref.key] = ref
                self.by_tensor.setdefault(name, []).append(ref)
        # Tied: transformers uses the embedding as the head (and ignores a stored
        # lm_head.weight if one exists), so the lm_head key must reach embed.
        if arch.tied(config) and "embed" in self.by_key:
            e = self.by_key["embed"]
            self.by_key["lm_head"] = RoleRef("lm_head", "lm_head", "weight", e.tensor, tied=True)

    def _classify(self, name, top_modules, layer_modules, fused_modules, expert_modules) -> list[RoleRef]:
        module, _, param = name.rpartition(".")
        if module in top_modules:
            role = top_modules[module]
            return [RoleRef(role_key(role, param), role, param, name, view=View(False))]
        m = self._layer_re.match(name)
        if not m:
            return []
        layer, inner, param = int(m.group(1)), m.group(2), m.group(3)
        t = self.arch.transposed
        if inner in layer_modules:
            role = layer_modules[inner]
            return [RoleRef(role_key(role, param, layer), role, param, name, layer, view=View(t))]
        if inner in fused_modules:
            frole = fused_modules[inner]
            refs = [RoleRef(role_key(frole, param, layer), frole, param, name, layer, view=View(t))]
            for prole, rows in self._fused_rows(frole):
                refs.append(RoleRef(role_key(prole, param, layer), prole, param, name, layer, view=View(t, rows), fused_in=frole))
            return refs
        if self._expert_re:
            em = self._expert_re.match(inner)
            if em and em.group(2) in expert_modules:
                role = expert_modules[em.group(2)]
                e = int(em.group(1))
                return [RoleRef(role_key(role, param, layer, e), role, param, name, layer, e, View(t))]
        return []

    def _fused_rows(self, frole: str):
        if frole not in self._fused_cache:
            self._fused_cache[frole] = self._split(frole)
        return self._fused_cache[frole]

    def _split(self, frole: str):
        spec = self.arch.fused[frole]
        sizes = [(p, self.arch.value(self.config, e)) for p, e in spec["parts"].items()]
        if any(s is None for _, s in sizes):
            raise ValueError(f"config.json lacks a field needed to split {frole}: {spec['parts']}")
        if spec["layout"] == "concat":
            out, pos = [], 0
            for p, s in sizes:
                out.append((p, (pos, pos + s)))
                pos += s
            return tuple(out)
        if spec["layout"] == "heads":  # [head][part][dim] interleaving (GPT-NeoX)
            heads = self.arch.value(self.config, spec["heads"])
            per_head = sum(s for _, s in sizes)
            out, pos = [], 0
            for p, s in sizes:
                idx = torch.cat([torch.arange(h * per_head + pos, h * per_head + pos + s) for h in range(heads)])
                out.append((p, idx))
                pos += s
            return tuple(out)
        raise ValueError(f"unknown fused layout {spec['layout']!r}")

    def resolve(self, key: str) -> RoleRef:
        """A role key (``layers.3.mlp.down``, ``lm_head``) or raw tensor name -> its RoleRef."""
        if key in self.by_key:
            return self.by_key[key]
        if key.endswith(".weight") and key[: -len(".weight")] in self.by_key:
            return self.by_key[key[: -len(".weight")]]
        if key in self.by_tensor:
            return self.by_tensor[key][0]
        raise RoleError(f"no tensor or role {key!r} in this {self.arch.name} checkpoint{_hint(key, self.by_key)}")


def _hint(key: str, keys) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""
