"""Tiny random checkpoints, one per supported family, built from transformers config classes.

Structural tests use these: they are saved with ``save_pretrained`` exactly as
a user's checkpoint would be, so the role tables are checked against what
transformers really writes, not against names we typed.
"""

from __future__ import annotations

from pathlib import Path

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, head_dim=16, max_position_embeddings=128)

FAMILIES: dict[str, dict] = {
    "llama": SMALL,
    "mistral": SMALL,
    "qwen2": SMALL,
    "qwen3": SMALL,
    "gemma": SMALL,
    "gemma2": SMALL,
    "gemma3_text": SMALL,
    "olmo2": SMALL,
    "phi3": {**SMALL, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1},
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=128),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=256, max_position_embeddings=128),
    "mixtral": {**SMALL, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {**SMALL, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1},
    "qwen2_moe": {**SMALL, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 64},
}


def build_tiny(model_type: str, out: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a random ``model_type`` model with the tiny config to ``out``; returns ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **{**FAMILIES[model_type], **overrides})
    model = AutoModelForCausalLM.from_config(cfg)
    # random init leaves norms at 1 / 0: perturb every parameter so views and roles are distinguishable
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(out)
    return Path(out)
