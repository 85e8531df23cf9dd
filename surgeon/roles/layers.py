"""What kind each decoder layer is, from config.json: attention full / sliding / chunked / linear, MLP dense / MoE.

Families describe layer heterogeneity in many ways; transformers 5 writes most
of them out as ``layer_types`` (Gemma-3: five ``sliding_attention`` layers, then
one ``full_attention``), older configs use ``sliding_window_pattern``. MoE
placement (``mlp_only_layers``, ``first_k_dense_replace``, ``decoder_sparse_step``,
``mlp_layer_types``) is read from the checkpoint's own tensors when a role
table exists (a layer with experts is MoE), else from those keys. RoPE bases
come from ``rope_parameters`` per attention type. Header-only: no torch.
"""

from __future__ import annotations

import re

ATTENTION = {
    "full_attention": "full",
    "sliding_attention": "sliding",
    "chunked_attention": "chunked",
    "linear_attention": "linear",
    "mamba": "mamba",
    "conv": "conv",
    "attention": "full",
}


def attention_kinds(config: dict, n: int) -> list[str]:
    """Per layer: ``full``, ``sliding``, ``chunked``, ``linear`` (or the config's word for another mixer)."""
    types = config.get("layer_types")
    if isinstance(types, list) and len(types) == n:
        return [ATTENTION.get(t, str(t)) for t in types]
    pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 0 and config.get("sliding_window"):
        return ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(n)]
    if config.get("attention_chunk_size") and config.get("no_rope_layers"):
        return ["chunked" if flag else "full" for flag in config["no_rope_layers"][:n]]
    if (
        config.get("sliding_window")
        and config.get("use_sliding_window", True) is not False
        and "layer_types" not in config
    ):
        return ["sliding"] * n
    return ["full"] * n


def mlp_kinds(config: dict, n: int, moe_layers: set[int] | None = None) -> list[str]:
    """Per layer: ``dense`` or ``moe``; ``moe_layers`` (layers holding experts, per the role table) decides if given."""
    if moe_layers is not None:
        return ["moe" if i in moe_layers else "dense" for i in range(n)]
    types = config.get("mlp_layer_types")
    if isinstance(types, list) and len(types) == n:
        return ["moe" if "sparse" in str(t) or "moe" in str(t) else "dense" for t in types]
    experts = next(
        (config.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts") if config.get(k)), 0
    )
    if not experts:
        return ["dense"] * n
    only = set(config.get("mlp_only_layers") or [])
    first = config.get("first_k_dense_replace") or 0
    step = config.get("decoder_sparse_step") or 1
    return ["dense" if i in only or i < first or (i + 1) % step else "moe" for i in range(n)]


def rope_bases(config: dict, attention: list[str]) -> list[float | None]:
    """Per layer: the RoPE base (``rope_theta``) its attention type uses, where config.json gives one."""
    params = config.get("rope_parameters")
    by_type = {}
    if isinstance(params, dict) and all(isinstance(v, dict) for v in params.values()):
        by_type = {ATTENTION.get(k, k): v.get("rope_theta") for k, v in params.items()}
    default = (params or {}).get("rope_theta") if isinstance(params, dict) and not by_type else config.get("rope_theta")
    local = config.get("rope_local_base_freq")
    return [by_type.get(a, local if a == "sliding" and local else default) for a in attention]


def layer_kinds(config: dict, n: int, moe_layers: set[int] | None = None) -> list[dict]:
    """One dict per layer: ``attention`` (+ ``window`` / ``chunk``), ``mlp``, ``rope_theta``."""
    att = attention_kinds(config, n)
    mlp = mlp_kinds(config, n, moe_layers)
    rope = rope_bases(config, att)
    out = []
    for i in range(n):
        k = {"attention": att[i], "mlp": mlp[i], "rope_theta": rope[i]}
        if att[i] == "sliding":
            k["window"] = config.get("sliding_window")
        if att[i] == "chunked":
            k["chunk"] = config.get("attention_chunk_size")
        out.append(k)
    return out


def describe(kind: dict, show_rope: bool) -> str:
    """``sliding 512 · dense · rope 1e4``: one layer kind in words."""
    att = (
        kind["attention"]
        + (f" {kind['window']}" if kind.get("window") else "")
        + (f" {kind['chunk']}" if kind.get("chunk") else "")
    )
    rope = f" · rope {kind['rope_theta']:g}" if show_rope and kind.get("rope_theta") is not None else ""
    return f"{att} · {kind['mlp']}{rope}"


def checkpoint_kinds(ck) -> list[dict]:
    """:func:`layer_kinds` of an opened checkpoint (a wrapper's text tower included); [] without roles."""
    arch = ck.architecture
    if arch is None:
        return []
    moe = {r.layer for r in ck.roles.by_key.values() if r.expert is not None} if arch.experts else None
    return layer_kinds(arch.settings(ck.config), ck.num_layers, moe)


def tags(kinds: list[dict]) -> list[str]:
    """Per layer, a short name of what sets it apart (``full`` / ``sliding``; ``moe`` / ``dense`` where MLPs
    differ); all empty when every layer is alike. Marks for a layer axis (locate's heatmap, reports)."""
    if not kinds:
        return []
    differ = [k for k in ("attention", "mlp") if len({kind.get(k) for kind in kinds}) > 1]
    return [" ".join(str(kind[k]) for k in differ) for kind in kinds]


def span_label(kinds: list[dict], layers: list[int]) -> str:
    """``sliding ×6, full ×1``: the kinds ``layers`` cover, in order of first appearance; "" if all alike."""
    return count_tags(tags(kinds), layers)


def count_tags(names: list[str], layers) -> str:
    """:func:`span_label` from per-layer :func:`tags` already computed."""
    counts: dict[str, int] = {}
    for i in layers:
        if 0 <= i < len(names) and names[i]:
            counts[names[i]] = counts.get(names[i], 0) + 1
    return ", ".join(f"{k} ×{n}" for k, n in counts.items())


def parse_layers(spec, num_layers: int, *, error: type[Exception] = ValueError) -> list[int]:
    """``"0-6"`` / ``"0,3,5"`` / ``"all"`` / ``[0, 1]`` -> sorted layer indices, checked against the model
    (one grammar for the fine-tune's, the edits' and the reports' layer ranges); ``error`` is raised on a bad spec."""
    if isinstance(spec, (list, tuple)):
        out = [int(x) for x in spec]
    else:
        s = str(spec).strip()
        if s == "all":
            return list(range(num_layers))
        out = []
        for part in s.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise error(f"layers {spec!r}: expected ranges like 0-6, lists like 0,3,5, or all")
            a, b = int(m.group(1)), int(m.group(2) or m.group(1))
            if b < a:
                raise error(f"layers {spec!r}: range {a}-{b} runs backwards")
            out.extend(range(a, b + 1))
    bad = [x for x in out if not 0 <= x < num_layers]
    if bad:
        raise error(f"layers {spec!r}: layer {bad[0]} does not exist "
                    f"(the model has {num_layers}: 0-{num_layers - 1})")
    return sorted(set(out))
