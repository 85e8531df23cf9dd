"""Architectural roles: what every tensor of a checkpoint *is*.

One vocabulary everywhere (API, CLI, JSON, manifests, errors):

* top level: ``embed``, ``pos_embed``, ``lm_head``, ``final_norm``
* per layer: ``layers.{L}.{role}`` with roles ``attn.q|k|v|o``, ``attn.q_norm``,
  ``attn.k_norm``, ``mlp.gate|up|down``, ``mlp.router``, shared-expert roles
  ``mlp.shared.*``, and norms named by what they do: ``norm.pre_attn``,
  ``norm.post_attn``, ``norm.pre_mlp``, ``norm.post_mlp``
* fused tensors as a whole: ``attn.qkv``, ``mlp.gate_up`` (their parts are
  the split roles above)
* MoE experts: ``layers.{L}.experts.{E}.mlp.down``
* a bias (or any parameter other than ``weight``) appends ``.bias``.

The mapping from on-disk names is data: one JSON file per family in
``surgeon/roles/architectures`` (the idea of mergekit's architecture files),
validated when read; ``docs/roles.md`` describes every field. Fused tensors
are exposed as their parts through :class:`View` objects that read a slice
and write it back into the whole; Conv1D matrices (GPT-2) are shown in
(out, in) orientation like every other matrix.

Nothing here imports torch: views index whatever tensor they are given, so
``surgeon inspect`` needs no tensor library for the role table itself.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from importlib import resources

from surgeon.errors import RoleError, SurgeonError, UnknownArchitecture
from surgeon.roles.refs import RoleRef, View, role_key

TOP_ROLES = ("embed", "pos_embed", "lm_head", "final_norm")
LAYER_ROLES = (
    "attn.q", "attn.k", "attn.v", "attn.o", "attn.q_norm", "attn.k_norm", "attn.qkv",
    "mlp.gate", "mlp.up", "mlp.down", "mlp.gate_up", "mlp.router",
    "mlp.shared.gate", "mlp.shared.up", "mlp.shared.down", "mlp.shared.router",
    "norm.pre_attn", "norm.post_attn", "norm.pre_mlp", "norm.post_mlp",
)
CONFIG_FIELDS = ("num_layers", "hidden_size", "vocab_size", "tie")


class ArchitectureError(SurgeonError):
    """A family table in surgeon/roles/architectures is malformed (a bug in the data, not in the checkpoint)."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Architecture:
    """One family's table, as read from ``surgeon/roles/architectures/<name>.json``."""

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    base_prefix: str  # transformers' base_model_prefix: names saved from the base model omit it
    tie_default: bool
    config: dict[str, str]  # num_layers / hidden_size / vocab_size / tie -> config.json key
    top: dict[str, str]  # role -> module path
    layer: str  # module path of layer {layer}
    roles: dict[str, str]  # layer role -> module path inside the layer
    fused: dict[str, dict] = field(default_factory=dict)
    experts: dict | None = None
    derived: dict[str, str] = field(default_factory=dict)
    transposed: bool = False  # Conv1D: 2-D layer weights stored (in, out)
    loaded_names: dict[str, str] = field(default_factory=dict)  # on-disk module name -> name in the loaded model
    bias_flags: dict[str, list[str]] = field(default_factory=dict)  # config flag -> roles it gives a bias (steering)
    norm_offset: float = 0.0  # norms scale by (norm_offset + weight): 1.0 for Gemma's RMSNorm
    source: str = "table"  # "table" (architectures/*.json) or "inferred" (surgeon.roles.infer)
    doc: str = ""  # what is special about the family, in prose
    # a text tower inside a multimodal wrapper (surgeon.roles.wrapped): the config.json key of its sub-config,
    # which ``config``/``derived``/``fused`` names refer to, filled in with transformers' defaults
    text_config: str = ""
    text_defaults: dict = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # stored-name prefix -> module prefix in the model

    @classmethod
    def from_json(cls, name: str, doc: dict) -> Architecture:
        """Read a table: every JSON key is a field of this class (``doc`` is the family's prose), checked first."""
        _validate(name, doc)
        kw = {}
        for f in fields(cls):
            if f.name == "name" or f.name not in doc:
                continue
            v = doc[f.name]
            kw[f.name] = _COERCE.get(f.name, lambda x: x)(v)
        return cls(name=name, **kw)

    def value(self, config: dict, expr: str):
        """Evaluate a size expression such as ``num_key_value_heads * head_dim``.

        Names come from config.json, falling back to this table's ``derived``
        formulas (Phi-3's config has no head_dim). Only names, integers, the
        four arithmetic operators and ``or`` are allowed.
        """
        return _eval(ast.parse(expr, mode="eval").body, self.settings(config), self.derived, expr)

    def settings(self, config: dict) -> dict:
        """Where this table's config names are read: config.json itself, or a wrapped text tower's sub-config.

        ``tie`` is the exception (:meth:`tied`): transformers ties a wrapper's head by its top-level flag.
        """
        if not self.text_config:
            return config
        return {**self.text_defaults, **(config.get(self.text_config) or {})}

    def own_config(self, config: dict) -> dict:
        """The dict of config.json that holds this table's keys, for writing one (a wrapper's text sub-config)."""
        return config.setdefault(self.text_config, {}) if self.text_config else config

    def num_layers(self, config: dict) -> int | None:
        return self.settings(config).get(self.config["num_layers"])

    def num_experts(self, config: dict) -> int | None:
        """Experts per MoE layer (``experts.count``), None for a dense family."""
        return self.value(config, self.experts["count"]) if self.experts else None

    def tied(self, config: dict) -> bool:
        return bool(config.get(self.config["tie"], self.tie_default))

    def module_in_model(self, path: str, modules) -> str | None:
        """The name of on-disk module ``path`` among ``modules`` of the model transformers builds.

        Usually the same; transformers 5 renames some modules when loading
        (Mixtral's ``block_sparse_moe`` becomes ``mlp``: ``loaded_names``), and
        a checkpoint saved from the base model lacks ``base_prefix``. None if
        no candidate exists (e.g. one expert of an MoE layer that transformers
        fuses into a single 3-D parameter).
        """
        renamed = self.unalias(path)
        for old, new in self.loaded_names.items():
            renamed = re.sub(rf"(^|\.){re.escape(old)}(?=\.|$)", rf"\g<1>{new}", renamed)
        candidates = [path, renamed]
        if self.base_prefix:
            candidates += [f"{self.base_prefix}.{c}" for c in (path, renamed)
                           if not c.startswith(self.base_prefix + ".")]
        return next((c for c in candidates if c in modules), None)

    def unalias(self, name: str) -> str:
        """A stored name in the model's own spelling: a wrapper's legacy prefix (``language_model.model.``)
        replaced by the module path transformers loads it to (``model.language_model.``); else unchanged."""
        for old in sorted(self.aliases, key=len, reverse=True):
            if name == old or name.startswith(old + "."):
                return self.aliases[old] + name[len(old):]
        return name

    def config_names(self) -> set[str]:
        """Every config.json key this table reads (derived names excluded)."""
        exprs = list(self.config.values()) + [s for spec in self.fused.values() for s in spec["parts"].values()]
        exprs += [spec["heads"] for spec in self.fused.values() if "heads" in spec]
        exprs += list(self.derived.values())
        if self.experts:
            exprs.append(self.experts["count"])
        names = set()
        for e in exprs:
            names |= {n.id for n in ast.walk(ast.parse(e, mode="eval")) if isinstance(n, ast.Name)}
        return (names | set(self.bias_flags)) - set(self.derived)


# The table format is the dataclass: fields without a default are required, the rest optional.
REQUIRED = tuple(f.name for f in fields(Architecture) if f.name != "name" and f.default is MISSING
                 and f.default_factory is MISSING)
OPTIONAL = tuple(f.name for f in fields(Architecture) if f.name != "name" and f.name not in REQUIRED)
_COERCE = {"model_types": tuple, "architectures": tuple, "tie_default": bool, "config": dict, "top": dict,
           "roles": dict, "fused": dict, "derived": dict, "transposed": bool, "loaded_names": dict,
           "bias_flags": dict, "norm_offset": float, "text_defaults": dict, "aliases": dict}


def _validate(name: str, doc: dict) -> None:
    """Refuse a table with a missing, unknown or misspelt field, so data cannot drift silently."""

    def bad(msg):
        raise ArchitectureError(f"surgeon/roles/architectures/{name}.json: {msg}")

    if not isinstance(doc, dict):
        bad("not a JSON object")
    for k in REQUIRED:
        if k not in doc:
            bad(f"missing field {k!r}")
    for k in doc:
        if k not in REQUIRED + OPTIONAL:
            bad(f"unknown field {k!r} (known: {', '.join(REQUIRED + OPTIONAL)})")
    if set(doc["config"]) != set(CONFIG_FIELDS):
        bad(f"config must map exactly {', '.join(CONFIG_FIELDS)}")
    if "{layer}" not in doc["layer"]:
        bad("layer must contain {layer}")
    for r in doc["top"]:
        if r not in TOP_ROLES:
            bad(f"top role {r!r} is not one of {', '.join(TOP_ROLES)}")
    layer_roles = list(doc["roles"])
    for frole, spec in doc.get("fused", {}).items():
        layer_roles += [frole, *spec.get("parts", {})]
        if spec.get("layout") not in ("concat", "heads"):
            bad(f"fused {frole}: layout must be 'concat' or 'heads'")
        if spec["layout"] == "heads" and "heads" not in spec:
            bad(f"fused {frole}: layout 'heads' needs a 'heads' size expression")
        if not spec.get("module") or not spec.get("parts"):
            bad(f"fused {frole}: needs 'module' and 'parts'")
    ex = doc.get("experts")
    if ex is not None:
        if "{expert}" not in ex.get("module", "") or "count" not in ex or not ex.get("roles"):
            bad("experts needs 'module' (with {expert}), 'count' and 'roles'")
        layer_roles += list(ex["roles"])
    for r in layer_roles:
        if r not in LAYER_ROLES:
            bad(f"role {r!r} is not in the vocabulary ({', '.join(LAYER_ROLES)})")
    if not isinstance(doc.get("norm_offset", 0.0), (int, float)):
        bad("norm_offset must be a number")
    for key, roles in doc.get("bias_flags", {}).items():
        if not isinstance(roles, list) or any(r not in LAYER_ROLES for r in roles):
            bad(f"bias_flags: {key!r} must map to a list of layer roles")


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
    raise ArchitectureError(f"unsupported size expression {expr!r}")


@cache
def architectures() -> dict[str, Architecture]:
    """All bundled families, keyed by file name."""
    out = {}
    for f in sorted(resources.files("surgeon.roles").joinpath("architectures").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".json"):
            name = f.name[: -len(".json")]
            out[name] = Architecture.from_json(name, json.loads(f.read_text()))
    return out


def supported_model_types() -> list[str]:
    return sorted(mt for a in architectures().values() for mt in a.model_types)


def find_table(config: dict) -> Architecture:
    """Pick the table for a config.json by ``model_type`` (:func:`surgeon.roles.infer.find_architecture` also infers).

    ``model_type`` decides, as it does for transformers' AutoConfig; the
    ``architectures`` class names are used only when a config has no
    model_type. An unknown model_type is refused even if its class name looks
    familiar: transformers would not load it as that family either.
    """
    mt = config.get("model_type")
    for arch in architectures().values():
        if mt in arch.model_types:
            return arch
    if mt is None:
        for arch in architectures().values():
            if set(config.get("architectures") or ()) & set(arch.architectures):
                return arch
    raise UnknownArchitecture(
        f"unknown architecture: model_type {mt!r} "
        f"({', '.join(config.get('architectures') or []) or 'no architectures'}); "
        f"supported: {', '.join(supported_model_types())}; tensors are still reachable by their raw names"
    )


class RoleTable:
    """Every role key of one checkpoint, and the role(s) of every tensor."""

    def __init__(self, arch: Architecture, config: dict, tensor_names):
        self.arch = arch
        self.config = config
        self.by_key: dict[str, RoleRef] = {}
        self.by_tensor: dict[str, list[RoleRef]] = {}
        self.unclassified: list[str] = []
        self._fused_cache: dict[str, tuple] = {}
        layer_pat = re.escape(arch.layer).replace(re.escape("{layer}"), r"(\d+)")
        self._layer_re = re.compile("^" + layer_pat + r"\.(.+)\.([^.]+)$")
        self._expert_re = None
        if arch.experts:
            pat = re.escape(arch.experts["module"]).replace(re.escape("{expert}"), r"(\d+)")
            self._expert_re = re.compile("^" + pat + r"\.(.+)$")
        self._layer_modules = {m: r for r, m in arch.roles.items()}
        self._fused_modules = {spec["module"]: r for r, spec in arch.fused.items()}
        self._expert_modules = {m: r for r, m in (arch.experts or {}).get("roles", {}).items()}
        self._top_modules = {m: r for r, m in arch.top.items()}
        prefix = arch.base_prefix + "." if arch.base_prefix else ""
        for name in tensor_names:
            refs = self._classify(name, name)
            if not refs and prefix and not name.startswith(prefix):
                refs = self._classify(prefix + name, name)  # saved from the base model (original GPT-2 files)
            if not refs and arch.aliases and arch.unalias(name) != name:
                refs = self._classify(arch.unalias(name), name)  # a wrapper's legacy names (language_model.model.)
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

    @property
    def num_experts(self) -> int | None:
        return self.arch.num_experts(self.config)

    def _classify(self, full: str, name: str) -> list[RoleRef]:
        """Roles of tensor ``name`` (``full``: the name with the base prefix restored)."""
        module, _, param = full.rpartition(".")
        if module in self._top_modules:
            role = self._top_modules[module]
            return [RoleRef(role_key(role, param), role, param, name)]
        m = self._layer_re.match(full)
        if not m:
            return []
        layer, inner, param = int(m.group(1)), m.group(2), m.group(3)
        t = self.arch.transposed
        if inner in self._layer_modules:
            role = self._layer_modules[inner]
            return [RoleRef(role_key(role, param, layer), role, param, name, layer, view=View(t))]
        if inner in self._fused_modules:
            frole = self._fused_modules[inner]
            refs = [RoleRef(role_key(frole, param, layer), frole, param, name, layer, view=View(t))]
            for prole, rows in self._fused_rows(frole):
                refs.append(RoleRef(role_key(prole, param, layer), prole, param, name, layer, view=View(t, rows),
                                    fused_in=frole))
            return refs
        if self._expert_re:
            em = self._expert_re.match(inner)
            if em and em.group(2) in self._expert_modules:
                role = self._expert_modules[em.group(2)]
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
            raise ArchitectureError(f"config.json lacks a field needed to split {frole}: {spec['parts']}")
        if spec["layout"] == "concat":
            out, pos = [], 0
            for p, s in sizes:
                out.append((p, range(pos, pos + s)))
                pos += s
            return tuple(out)
        # "heads": rows interleaved per head, [head][part][dim] (GPT-NeoX query_key_value)
        heads = self.arch.value(self.config, spec["heads"])
        per_head = sum(s for _, s in sizes)
        out, pos = [], 0
        for p, s in sizes:
            out.append((p, tuple(h * per_head + pos + i for h in range(heads) for i in range(s))))
            pos += s
        return tuple(out)

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
