"""Tiny configs of any transformers family: the same structure, sizes small enough to run on a CPU in milliseconds.

Role inference (:mod:`surgeon.roles.infer`) traces a real forward pass of a
model built from a shrunk copy of the checkpoint's config (every flag kept,
only sizes changed), and the family test matrix builds one such model per
family. Only keys the config already has are changed, so a family's own
switches (biases, layer patterns, MoE placement) survive.
"""

from __future__ import annotations

# size keys, by the names families give them; the values keep head_dim * heads == hidden
SIZES = {
    "hidden_size": 64,
    "n_embd": 64,
    "d_model": 64,
    "dim": 64,
    "model_dim": 64,
    "emb_dim": 64,
    "embed_dim": 64,
    "intermediate_size": 128,
    "n_inner": 128,
    "ffn_dim": 128,
    "ffn_hidden_size": 128,
    "d_ff": 128,
    "num_attention_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "num_heads": 4,
    "attention_heads": 4,
    "num_key_value_heads": 2,
    "n_kv_heads": 2,
    "num_kv_heads": 2,
    "head_dim": 16,
    "kv_channels": 16,
    "vocab_size": 256,
    "vocab_size_per_layer_input": 256,  # Gemma-3n: per-layer embeddings, 35 × 262144 rows at full size
    "max_position_embeddings": 128,
    "n_positions": 128,
    "n_ctx": 128,
    "max_seq_len": 128,
    "moe_intermediate_size": 24,
    "expert_intermediate_size": 24,
    "shared_expert_intermediate_size": 64,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "top_k": 2,
    "moe_k": 2,
    "n_shared_experts": 1,
    "num_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "sliding_window": 64,
    "attention_chunk_size": 64,
    "rotary_dim": 8,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
}
IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1, "decoder_start_token_id": 1, "unk_token_id": 2}


def shrink(config: dict, num_layers: int | None = None) -> dict:
    """A copy of config.json's dict with small sizes (and ``num_layers`` layers, per-layer lists cut to match)."""
    out = dict(config)
    for k, v in SIZES.items():
        if isinstance(out.get(k), int) and not isinstance(out.get(k), bool):
            out[k] = min(out[k], v) if k in ("num_experts_per_tok", "moe_topk", "top_k", "moe_k") else v
    for k, v in IDS.items():
        if isinstance(out.get(k), int) and out[k] >= SIZES["vocab_size"]:
            out[k] = v
        elif isinstance(out.get(k), list):
            out[k] = [i if i < SIZES["vocab_size"] else v for i in out[k]]
    if "head_dim" in out and out.get("head_dim") is None:
        out["head_dim"] = SIZES["head_dim"]
    n = _num_layers(out)
    if num_layers is not None and n is not None and num_layers < n:
        for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
            if isinstance(out.get(key), int):
                out[key] = num_layers
        for k, v in list(out.items()):
            if isinstance(v, list) and len(v) == n:
                out[k] = v[:num_layers]
            elif isinstance(v, dict) and v and all(str(i).isdigit() for i in v):
                out[k] = {i: c for i, c in v.items() if int(i) < num_layers}  # per-layer settings by index
            elif (
                isinstance(v, list)
                and v
                and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
                and k.endswith("layers")
            ):
                out[k] = [i for i in v if i < num_layers]  # layer indices (mlp_only_layers, no_rope_layers)
    return out


def _num_layers(cfg: dict) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


def tiny_config(model_type: str, num_layers: int = 2, **overrides) -> dict:
    """config.json's dict of a tiny ``model_type`` model: the config class defaults, shrunk (imports transformers)."""
    from transformers import CONFIG_MAPPING

    defaults = CONFIG_MAPPING[model_type]().to_dict()
    cfg = shrink(defaults, num_layers)
    cfg.update(overrides)
    return cfg
