"""Multimodal wrappers (Gemma-3 with vision, Llava, Mistral-3, PaliGemma): the text tower's roles, nothing else.

Each tiny wrapper is built from its config class (every sub-config shrunk) and saved with
save_pretrained, which writes the legacy names (``language_model.model.layers.N...``); a second copy
holds the loaded model's names (``model.language_model.layers.N...``). The text tower must expose the
same role keys as the text family's own tiny model, every vision / projector tensor must have no role,
role reads and writes must hit the text tower's tensor, and the roles must behave as named on the
loaded wrapper (the behaviour checks of tests/test_families.py, run through tests/test_matrix.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_matrix
import torch
from click.testing import CliRunner
from safetensors import safe_open
from tiny import build_wrapped
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

import surgeon
from surgeon.cli import main
from surgeon.errors import UnknownArchitecture
from surgeon.roles.infer import infer_architecture
from surgeon.roles.layers import checkpoint_kinds
from surgeon.runtime.placement import auto_class

WRAPPERS = ["gemma3", "llava", "mistral3", "paligemma"]


@pytest.fixture(scope="session")
def wrapped(tmp_path_factory):
    """wrapped("gemma3", memory_names=False) -> a tiny saved wrapper (built once per session)."""
    cache = {}

    def make(model_type: str, memory_names: bool = False, **text):
        key = (model_type, memory_names, json.dumps(text, sort_keys=True))
        if key not in cache:
            out = tmp_path_factory.mktemp(model_type) / "ckpt"
            cache[key] = build_wrapped(model_type, out, memory_names=memory_names, **text)
        return cache[key]

    return make


def _stored(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _text_keys(path: Path, tmp_path: Path) -> set[str]:
    """Role keys of the text family's own model built from the wrapper's text config."""
    cfg = CONFIG_MAPPING[json.loads((path / "config.json").read_text())["model_type"]].from_pretrained(path)
    AutoModelForCausalLM.from_config(cfg.get_text_config()).save_pretrained(tmp_path / "text")
    return set(surgeon.open(tmp_path / "text").keys())


def _text_tensor(name: str) -> bool:
    return name.startswith(("language_model.", "model.language_model.", "lm_head."))


@pytest.mark.parametrize("model_type", WRAPPERS)
@pytest.mark.parametrize("memory_names", [False, True], ids=["saved-names", "loaded-names"])
def test_inspect_lists_the_text_towers_roles_and_nothing_else(wrapped, model_type, memory_names, tmp_path):
    path = wrapped(model_type, memory_names)
    got = CliRunner().invoke(main, ["inspect", "--json", str(path)])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.output)
    assert doc["family"] == model_type and doc["roles_from"] == "table" and doc["warning"] is None
    assert doc["text_tower"]["module"] == "model.language_model"
    text = [t for t in doc["tensors"] if _text_tensor(t["name"])]
    other = [t for t in doc["tensors"] if not _text_tensor(t["name"])]
    assert text and other
    assert all(t["role"] for t in text), [t["name"] for t in text if not t["role"]]
    assert all(t["role"] is None for t in other), [t["name"] for t in other if t["role"]]
    assert sorted(doc["unclassified"]) == sorted(t["name"] for t in other)
    assert set(surgeon.open(path).keys()) == _text_keys(path, tmp_path)
    table = CliRunner().invoke(main, ["inspect", str(path)])
    assert table.exit_code == 0, table.output
    assert "text tower model.language_model" in table.output and "without a role" in table.output


@pytest.mark.parametrize("model_type", ["gemma3", "llava"])
def test_role_keys_read_and_write_the_text_towers_tensors_and_save_round_trips(wrapped, model_type, tmp_path):
    path = wrapped(model_type)
    stored = _stored(path)
    ck = surgeon.open(path)
    name = "language_model.model.layers.0.mlp.down_proj.weight"
    assert ck.resolve("layers.0.mlp.down").tensor == name
    assert torch.equal(ck["layers.0.mlp.down"], stored[name].float())
    ck.save(tmp_path / "same")  # a no-op save round-trips every tensor, the vision tower's included
    assert {k: v.tolist() for k, v in _stored(tmp_path / "same").items()} == {k: v.tolist() for k, v in stored.items()}
    new = torch.randn_like(ck["layers.0.mlp.down"])
    ck["layers.0.mlp.down"] = new
    ck.save(tmp_path / "edited")
    after = _stored(tmp_path / "edited")
    assert torch.equal(after[name], new)
    assert [k for k in stored if not torch.equal(stored[k], after[k])] == [name]
    assert torch.equal(surgeon.open(tmp_path / "edited")["layers.0.mlp.down"], new)


def test_loaded_names_resolve_to_their_own_tensors(wrapped):
    ck = surgeon.open(wrapped("gemma3", memory_names=True))
    assert ck.resolve("layers.1.attn.q").tensor == "model.language_model.layers.1.self_attn.q_proj.weight"
    assert ck.resolve("embed").tensor == "model.language_model.embed_tokens.weight"
    assert ck.tied and ck.resolve("lm_head").tensor == ck.resolve("embed").tensor


@pytest.mark.parametrize("model_type", ["gemma3", "llava"])
def test_text_roles_behave_as_named_in_the_loaded_wrapper(wrapped, model_type, tmp_path, monkeypatch):
    """Zeroing attn.q makes the text tower's attention uniform, zeroing mlp.up silences its MLP, gate and
    up act as named, each norm acts where its name says, a tied head writes the embedding: on the wrapper
    transformers loads (Gemma3ForConditionalGeneration; LlavaForConditionalGeneration, run on text)."""
    path = wrapped(model_type)
    monkeypatch.setattr(test_matrix, "_opened", lambda _mt: (path, surgeon.open(path)))
    ran = test_matrix.check_family(model_type, tmp_path)
    assert {"attn.q", "mlp.up", "mlp.gate", "norms"} <= set(ran)
    assert ("tied" in ran) == (model_type == "gemma3")


def test_layer_kinds_come_from_the_text_sub_config(wrapped):
    path = wrapped("gemma3", layer_types=["sliding_attention", "full_attention"])
    kinds = checkpoint_kinds(surgeon.open(path))
    assert [k["attention"] for k in kinds] == ["sliding", "full"]
    assert kinds[0]["window"] == json.loads((path / "config.json").read_text())["text_config"]["sliding_window"]


def test_a_composite_config_without_a_text_tower_is_refused_with_the_reason():
    with pytest.raises(UnknownArchitecture, match="without a text sub-config"):
        infer_architecture(CONFIG_MAPPING["dbrx"]().to_dict())


def test_runtime_refuses_a_family_transformers_cannot_run_in_one_line():
    class Config:
        model_type = "vision_only_thing"

    with pytest.raises(UnknownArchitecture, match="no causal-LM or image-text-to-text class") as e:
        auto_class(Config(), "/ckpt")
    assert "\n" not in str(e.value)
    assert auto_class(CONFIG_MAPPING["llava"](), "/ckpt").__name__ == "AutoModelForImageTextToText"
    assert auto_class(CONFIG_MAPPING["gemma3"](), "/ckpt").__name__ == "AutoModelForCausalLM"


def test_added_tokens_grow_the_text_configs_vocabulary_and_the_wrapper_loads(wrapped, tmp_path):
    from surgeon.edits.tokens import add_tokens
    from surgeon.runtime import load

    ck = surgeon.open(wrapped("llava"))
    add_tokens(ck, ["ѣ"], init="vocab_mean")
    assert ck.config["text_config"]["vocab_size"] == 257 and "vocab_size" not in ck.config
    ck.save(tmp_path / "grown")
    rt = load(tmp_path / "grown")
    assert rt.model.get_input_embeddings().weight.shape[0] == 257
    assert rt.logits(torch.tensor([[256, 5]])).shape[-1] == 257
