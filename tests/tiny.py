"""Tiny random checkpoints, one per supported family, built from transformers config classes.

Structural tests use these: they are saved with ``save_pretrained`` exactly as
a user's checkpoint would be, so the role tables are checked against what
transformers really writes, not against names we typed. Each directory also
gets a 256-token byte-level tokenizer (one token per byte, so it fits
``vocab_size=256``), which lets :mod:`surgeon.runtime` load it like a real model.

Adding a family: add its model_type here with a config small enough to build
in well under a second, with every optional tensor kind switched on (biases,
a dense layer in an MoE model), so the family's table is exercised in full.
"""

from __future__ import annotations

from pathlib import Path

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, head_dim=16, max_position_embeddings=128)
# token ids inside the 256-entry vocabulary (the defaults of some configs point past it)
IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[1])

FAMILIES: dict[str, dict] = {
    "llama": SMALL,
    "mistral": SMALL,
    "qwen2": SMALL,
    "qwen3": SMALL,
    "gemma": SMALL,
    "gemma2": SMALL,
    "gemma3_text": SMALL,
    "olmo2": {**SMALL, **IDS},
    "phi3": {**SMALL, **IDS},
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=128, **IDS),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=256, max_position_embeddings=128, **IDS),
    "mixtral": {**SMALL, "num_local_experts": 4, "num_experts_per_tok": 2},
    # layer 1 listed in mlp_only_layers keeps a dense MLP, so both kinds of layer are covered
    "qwen3_moe": {**SMALL, **MOE},
    "qwen2_moe": {**SMALL, **MOE, "shared_expert_intermediate_size": 64},
}


def build_tiny(model_type: str, out: str | Path, seed: int = 0, dtype: str | None = None, head: bool = True,
               **overrides) -> Path:
    """Save a random ``model_type`` model with the tiny config (and a byte tokenizer) to ``out``.

    ``dtype`` ("bfloat16", "float16"): store the weights in that dtype instead of float32.
    ``head=False``: save the base model (``AutoModel``), whose tensor names lack the
    ``model.``/``transformer.`` prefix, like the original GPT-2 files. Returns ``out``.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **{**FAMILIES[model_type], **overrides})
    model = (AutoModelForCausalLM if head else AutoModel).from_config(cfg)
    # random init leaves norms at 1 / 0: perturb every parameter so views and roles are distinguishable
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return Path(out)


def byte_tokenizer():
    """A 256-token byte-level BPE without merges: every byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=alphabet[1], pad_token=alphabet[0],
                                   bos_token=alphabet[1])


def build_any(model_type: str, out: str | Path, seed: int = 0, **overrides) -> Path:
    """Like :func:`build_tiny` for any family transformers defines: its config class defaults, shrunk."""
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    from surgeon.roles.shrink import tiny_config

    torch.manual_seed(seed)
    cfg = CONFIG_MAPPING[model_type].from_dict(tiny_config(model_type, **{**FAMILIES.get(model_type, {}), **overrides}))
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return Path(out)


def build_wrapped(model_type: str, out: str | Path, seed: int = 0, memory_names: bool = False,
                  **text_overrides) -> Path:
    """A tiny multimodal wrapper (``gemma3``, ``llava``, ...): every sub-config shrunk, saved like a user's.

    ``memory_names``: write the tensors under the names of the loaded model (``model.language_model.*``,
    as transformers 4.52-4.57 saved them) instead of the legacy names save_pretrained writes
    (``language_model.model.*``). ``text_overrides`` go into the text sub-config.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import CONFIG_MAPPING, AutoModelForImageTextToText

    from surgeon.roles.shrink import shrink

    torch.manual_seed(seed)
    cls = CONFIG_MAPPING[model_type]
    doc = cls().to_dict()
    for key in cls.sub_configs:
        doc[key] = shrink(doc[key], 2)
    doc["text_config"].update(text_overrides)
    model = AutoModelForImageTextToText.from_config(cls.from_dict(shrink(doc)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(out)
    if memory_names:
        (Path(out) / "model.safetensors").unlink()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()
                   if not (k == "lm_head.weight" and model.config.tie_word_embeddings)},
                  str(Path(out) / "model.safetensors"), metadata={"format": "pt"})
    byte_tokenizer().save_pretrained(out)
    return Path(out)
