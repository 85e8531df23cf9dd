"""A fused tensor's layout, inferred (:mod:`surgeon.roles.infer`): which size expressions its parts have.

The tiny traced model shows which columns of a fused projection feed which role
(:mod:`surgeon.roles.blocks`); here those column lists become a table's ``fused`` entry:
``concat`` parts with a config size expression each, or GPT-NeoX-style ``heads``
interleaving, checked against the full-size skeleton's width.
"""

from __future__ import annotations

from surgeon.roles.table import Architecture

PART_SIZES = (
    "num_attention_heads * head_dim",
    "num_key_value_heads * head_dim",
    "hidden_size",
    "n_embd",
    "intermediate_size",
    "head_dim",
    "n_inner",
)


def _values(cfg: dict) -> dict:
    v = dict(cfg)
    if v.get("head_dim") is None and v.get("hidden_size") and v.get("num_attention_heads"):
        v["head_dim"] = v["hidden_size"] // v["num_attention_heads"]
    return v


def _size_expr(small: int, cfg: dict, small_cfg: dict) -> str | None:
    probe = Architecture.from_json("probe", _probe_doc())
    for e in PART_SIZES:
        if probe.value(_values(small_cfg), e) == small and probe.value(_values(cfg), e):
            return e
    return None


def _probe_doc() -> dict:
    return {
        "model_types": [],
        "architectures": [],
        "base_prefix": "",
        "tie_default": False,
        "config": {"num_layers": "n", "hidden_size": "h", "vocab_size": "v", "tie": "t"},
        "top": {},
        "layer": "l.{layer}",
        "roles": {},
    }


def fused_spec(config, small_cfg, parts: dict[str, list[int]], model, skeleton, mem: str) -> dict | None:
    """Layout and size expressions of a fused tensor whose parts are ``parts`` (column lists in the tiny model)."""
    order = sorted(parts, key=lambda p: parts[p][0])
    width = sum(len(c) for c in parts.values())
    dim = 0 if model.get_submodule(mem).weight.shape[0] == width else 1
    full_width = skeleton.get_submodule(mem).weight.shape[dim]
    if all(parts[p] == list(range(parts[p][0], parts[p][0] + len(parts[p]))) for p in parts):
        sizes = {}
        for p in order:
            e = _size_expr(len(parts[p]), config, small_cfg)
            if e is None:
                return None
            sizes[p] = e
        probe = Architecture.from_json("probe", _probe_doc())
        if sum(probe.value(_values(config), e) for e in sizes.values()) != full_width:
            return None
        return {"layout": "concat", "parts": sizes}
    heads_n = _values(small_cfg).get("num_attention_heads")
    hd = len(parts[order[0]]) // heads_n if heads_n else 0
    if hd and all(len(parts[p]) == heads_n * hd for p in order):
        per = hd * len(order)
        if all(
            parts[p] == [h * per + i * hd + j for h in range(heads_n) for j in range(hd)] for i, p in enumerate(order)
        ):
            return {"layout": "heads", "heads": "num_attention_heads", "parts": {p: "head_dim" for p in order}}
    return None


def derived(config: dict, fused: dict) -> dict:
    uses = " ".join(e for spec in fused.values() for e in spec["parts"].values())
    if "head_dim" in uses and config.get("head_dim") is None:
        return {"head_dim": "hidden_size // num_attention_heads"}
    return {}
