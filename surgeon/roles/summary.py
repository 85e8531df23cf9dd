"""What a checkpoint holds, by role: the data behind ``surgeon inspect``.

Header-only: nothing here reads tensor data, so inspecting a 70B checkpoint
costs the same as inspecting a 135M one (plus the size of the headers).
"""

from __future__ import annotations

from collections import Counter

from surgeon.roles import LAYER_ROLES, TOP_ROLES
from surgeon.roles.layers import describe, layer_kinds


def summarize(ck) -> dict:
    """The JSON document of ``surgeon inspect --json``."""
    cfg = ck.config
    arch = ck.architecture
    table = ck.roles if arch else None
    tensors = []
    for name, e in sorted(ck.entries.items(), key=lambda kv: (kv[1].file, kv[1].start)):
        refs = table.by_tensor.get(name, []) if table else []
        whole = next((r for r in refs if r.view.rows is None), None)
        row = {
            "name": name,
            "key": whole.key if whole else None,
            "role": whole.role if whole else None,
            "layer": whole.layer if whole else None,
            "expert": whole.expert if whole else None,
            "param": whole.param if whole else name.rpartition(".")[2],
            "shape": list(whole.view.shape(e.shape)) if whole else list(e.shape),
            "stored_shape": list(e.shape),
            "dtype": e.dtype,
            "file": e.file,
            "bytes": e.nbytes,
        }
        parts = [r for r in refs if r.view.rows is not None]
        if parts:
            row["fused"] = True
            row["splits"] = [{"key": r.key, "role": r.role, "shape": list(r.view.shape(e.shape))} for r in parts]
        if whole and whole.view.transposed and len(e.shape) == 2:
            row["transposed_on_disk"] = True
        tensors.append(row)
    if table and table.by_key.get("lm_head") and table.by_key["lm_head"].tied:
        tied = True
    else:
        tied = bool(arch and arch.tied(cfg))
    embed_rows = ck.shape("embed")[0] if table and "embed" in table.by_key else None
    experts = sorted({t["expert"] for t in tensors if t["expert"] is not None})
    n_layers = ck.num_layers if arch else None
    moe = {t["layer"] for t in tensors if t["expert"] is not None} if arch else None
    text = arch.settings(cfg) if arch else cfg  # a wrapped text tower's sub-config, else config.json
    return {
        "path": str(ck.path),
        "model_type": cfg.get("model_type"),
        "architecture": (cfg.get("architectures") or [None])[0],
        "family": arch.name if arch else None,
        "roles_from": arch.source if arch else None,
        "warning": None if arch else f"no roles: {ck.unknown_reason}",
        "notes": arch.doc if arch else None,
        "num_layers": ck.num_layers if arch else None,
        "text_tower": _tower(arch),
        "hidden_size": text.get(arch.config["hidden_size"]) if arch else cfg.get("hidden_size"),
        "vocab_size": text.get(arch.config["vocab_size"]) if arch else cfg.get("vocab_size"),
        "embedding_rows": embed_rows,
        "tied_embeddings": tied,
        "num_experts": table.num_experts if table and experts else None,
        "dtypes": dict(Counter(e.dtype for e in ck.entries.values())),
        "total_bytes": sum(e.nbytes for e in ck.entries.values()),
        "num_tensors": len(ck.entries),
        "files": sorted(ck.shards),
        "layers": layer_kinds(text, n_layers, moe if arch.experts else None) if n_layers else [],
        "unclassified": sorted(table.unclassified) if table else sorted(ck.entries),
        "tensors": tensors,
    }


def _tower(arch) -> dict | None:
    """Where a multimodal wrapper keeps its text model: module path, config.json key, text family."""
    if not arch or not arch.text_config:
        return None
    return {"module": arch.layer.rpartition(".layers")[0], "config": arch.text_config,
            "model_type": arch.text_defaults.get("model_type")}


# table columns: layer roles in vocabulary order, each MoE expert role right after the router
_EXPERT_COLUMNS = [f"experts.{m}" for m in ("mlp.gate", "mlp.up", "mlp.down", "mlp.gate_up")]
_COLUMNS = [c for r in LAYER_ROLES for c in ([r] + (_EXPERT_COLUMNS if r == "mlp.router" else []))]


def _fmt_shape(shape) -> str:
    return "×".join(str(d) for d in shape)


def _ranges(nums: list[int]) -> str:
    out, start, prev = [], None, None
    for n in nums + [None]:
        if start is None:
            start = prev = n
        elif n is not None and n == prev + 1:
            prev = n
        else:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = n
    return ",".join(out)


def _kind_lines(kinds: list[dict]) -> list[str]:
    """``layer kinds: 0-4,6-10 sliding 512 · dense · rope 10000; 5,11 full · dense · rope 1e+06`` when layers differ."""
    if not kinds or all(k == kinds[0] for k in kinds):
        return [f"  every layer: {describe(kinds[0], True)}"] if kinds else []
    show_rope = len({k.get("rope_theta") for k in kinds}) > 1
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(kinds):
        groups.setdefault(describe(k, show_rope), []).append(i)
    return ["  layer kinds: " + "; ".join(f"{_ranges(ls)} {d}" for d, ls in groups.items())]


def format_text(doc: dict) -> str:
    """Human-readable report: header lines, top-level roles, then a layers × roles table.

    Layers with identical shapes are collapsed into one row (``0-29``), which
    keeps a 30-layer model on one screen and makes irregular layers stand out.
    """
    lines = _header_lines(doc) + _top_lines(doc)
    layered = [t for t in doc["tensors"] if t["layer"] is not None]
    if layered:
        lines += _layer_table(doc, layered)
    if doc["unclassified"]:
        lines.append("")
        lines.append(f"  {len(doc['unclassified'])} tensor(s) without a role: " + ", ".join(doc["unclassified"][:8]))
    return "\n".join(lines)


def _header_lines(doc: dict) -> list[str]:
    """Path, family, sizes and the files' bytes and dtypes."""
    gib = doc["total_bytes"] / 2**30
    source = f" ({doc['roles_from']})" if doc.get("roles_from") == "inferred" else ""
    return [
        f"{doc['path']}",
        f"  family {doc['family']}{source}  model_type {doc['model_type']}  architecture {doc['architecture']}",
        f"  layers {doc['num_layers']}  hidden {doc['hidden_size']}  vocab {doc['vocab_size']}"
        f" (embedding rows {doc['embedding_rows']})  tied embeddings {'yes' if doc['tied_embeddings'] else 'no'}",
        *([f"  {doc['notes']}"] if doc.get("notes") else []),
        *([f"  text tower {t['module']} (config.json {t['config']}); the other towers' tensors have no roles"]
          if (t := doc.get("text_tower")) else []),
        f"  {doc['num_tensors']} tensors in {len(doc['files'])} file(s), {doc['total_bytes']:,} bytes ({gib:.2f} GiB), "
        + ", ".join(f"{k} {v}" for k, v in sorted(doc["dtypes"].items())),
    ]


def _top_lines(doc: dict) -> list[str]:
    """The top-level roles (embed, lm_head, ...), one line each; a tied head says so."""
    top = [t for t in doc["tensors"] if t["layer"] is None and t["role"]]
    if not top:
        return []
    lines = [""]
    for t in sorted(top, key=lambda t: (TOP_ROLES.index(t["role"]) if t["role"] in TOP_ROLES else 9, t["param"])):
        lines.append(f"  {t['key']:<22} {_fmt_shape(t['shape']):>14}  {t['dtype']}  {t['name']}")
    if doc["tied_embeddings"] and not any(t["role"] == "lm_head" for t in top):
        lines.append(f"  {'lm_head':<22} {'(tied to embed)':>14}")
    return lines


def _layer_cells(layered: list[dict]) -> tuple[dict[int, dict[str, str]], dict[int, set]]:
    """Per layer, column -> cell text (shape, ``*`` for a fused part, ``+b`` for a bias; expert 0 only),
    and per MoE layer the experts seen."""
    per_layer: dict[int, dict[str, str]] = {}
    experts: dict[int, set] = {}
    for t in layered:
        prefix = ""
        if t["expert"] is not None:
            experts.setdefault(t["layer"], set()).add(t["expert"])
            if t["expert"] != 0:
                continue
            prefix = "experts."
        cells = per_layer.setdefault(t["layer"], {})
        entries = [(t["role"], t["shape"], "")] + [(s["role"], s["shape"], "*") for s in t.get("splits", [])]
        for role, shape, mark in entries:
            col = prefix + role
            prev = cells.get(col, "")
            if t["param"] == "weight":
                cells[col] = _fmt_shape(shape) + mark + prev
            elif t["param"] == "bias":
                cells[col] = prev + "+b"
    return per_layer, experts


def _layer_groups(per_layer: dict[int, dict[str, str]], kinds: list[dict]) -> list[tuple[list[int], dict]]:
    """Runs of consecutive layers with the same cells and the same kind, as (layers, cells)."""
    groups: list[tuple[list[int], dict]] = []
    for layer in sorted(per_layer):
        row = per_layer[layer]
        kind = kinds[layer] if layer < len(kinds) else None
        if groups and groups[-1][1] == row and (kinds[groups[-1][0][-1]] if kinds else None) == kind:
            groups[-1][0].append(layer)
        else:
            groups.append(([layer], row))
    return groups


def _layer_table(doc: dict, layered: list[dict]) -> list[str]:
    """The layers × roles table, the layer kinds, and the legend for what the table marks."""
    per_layer, experts = _layer_cells(layered)
    present = {c for row in per_layer.values() for c in row}
    cols = [c for c in _COLUMNS if c in present]
    kinds = doc.get("layers") or []
    groups = _layer_groups(per_layer, kinds)
    widths = {c: max(len(c), *(len(g[1].get(c, "")) for g in groups)) for c in cols}
    lines = ["", "  " + f"{'layers':<8}" + "  ".join(f"{c:>{widths[c]}}" for c in cols)]
    differ = bool(kinds) and any(k != kinds[0] for k in kinds)
    show_rope = len({k.get("rope_theta") for k in kinds}) > 1
    for ls, row in groups:
        tail = f"  {describe(kinds[ls[0]], show_rope)}" if differ and ls[0] < len(kinds) else ""
        lines.append("  " + f"{_ranges(ls):<8}" + "  ".join(f"{row.get(c, '-'):>{widths[c]}}" for c in cols) + tail)
    return lines + _kind_lines(kinds) + _legend(layered, experts)


def _legend(layered: list[dict], experts: dict[int, set]) -> list[str]:
    """Footnotes: experts per MoE layer, fused parts (``*``), biases (``+b``)."""
    lines = []
    if experts:
        by_count: dict[int, list[int]] = {}
        for layer, es in experts.items():
            by_count.setdefault(len(es), []).append(layer)
        counts = "; ".join(f"{n} experts in layers {_ranges(sorted(ls))}" for n, ls in by_count.items())
        lines.append("  experts.*: " + counts + " (expert 0 shown; keys layers.L.experts.E.mlp.*)")
    if any(t.get("fused") for t in layered):
        lines.append("  * a split view of a fused tensor (the attn.qkv / mlp.gate_up column); "
                     "writes go back into it")
    if any(t["param"] == "bias" for t in layered):
        lines.append("  +b the role also has a bias")
    return lines
