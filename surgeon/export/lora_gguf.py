"""An edit's PEFT adapter as a llama.cpp LoRA GGUF (llama.cpp's ``convert_lora_to_gguf.py``), plus an Ollama Modelfile.

llama.cpp's LoRA holds A/B pairs only and scales every pair by ``alpha / rank`` with one alpha for
the whole file (``llama_adapter_lora_weight::get_scale`` in src/llama-adapter.h). surgeon's adapters
give each tensor its own rank with scaling 1 (``alpha_pattern`` follows ``rank_pattern``), so each
B is multiplied by ``rank / alpha`` in a temporary copy before converting: llama.cpp then applies
exactly ΔW = B·A. What llama.cpp's LoRA cannot hold is refused before converting, naming the tensor:
``lora_bias`` (a baked steering bias: export a control vector instead), ``modules_to_save`` (changed
norms: export the whole model with ``surgeon export gguf``), rsLoRA and DoRA.

Ollama reads the same two files (``FROM`` base GGUF, ``ADAPTER`` LoRA GGUF); it is not installed
here, so the Modelfile is written but only llama.cpp's reading of the adapter is tested.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from surgeon.export.llama_cpp import GGUFError, find_llama_cpp
from surgeon.io.atomic import atomic_file, check_output

_PAIR = re.compile(r"^(.*)\.(lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")


def export_lora_gguf(adapter: str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike, *,
                     outtype: str = "f32", converter=None, base_gguf: str | os.PathLike | None = None,
                     overwrite: bool = False) -> dict:
    """Convert a PEFT adapter directory (from ``surgeon export-adapter``) against its ``base`` checkpoint.

    Writes ``out`` (a LoRA GGUF) and ``Modelfile`` beside it (``FROM`` ``base_gguf`` when given,
    else ``./base.gguf`` with a comment saying how to make it). Returns file names, seconds, pairs.
    """
    adapter = Path(adapter)
    out = check_output(out, (adapter,), overwrite=overwrite)
    config, pairs = llama_cpp_pairs(adapter)
    src = find_llama_cpp(converter)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="surgeon-lora-") as tmp, atomic_file(out) as tmp_out:
        save_file(pairs, str(Path(tmp) / "adapter_model.safetensors"), metadata={"format": "pt"})
        (Path(tmp) / "adapter_config.json").write_text(json.dumps(config))
        src.run(src.lora_converter, tmp, "--base", str(base), "--outfile", str(tmp_out), "--outtype", outtype,
                what=str(adapter))
    seconds = time.perf_counter() - t0
    modelfile = out.parent / "Modelfile"
    lines = [f"# Ollama: ollama create NAME -f {modelfile.name}"]
    if base_gguf is None:
        lines.append("# the base model as GGUF: surgeon export gguf BASE --out base.gguf")
    lines += [f"FROM {_relative(base_gguf, out.parent) if base_gguf else './base.gguf'}", f"ADAPTER ./{out.name}"]
    modelfile.write_text("\n".join(lines) + "\n")
    n_pairs = sum(1 for n in pairs if n.endswith(("lora_A.weight", "lora_embedding_A")))
    return {"out": str(out), "modelfile": str(modelfile), "seconds": seconds, "pairs": n_pairs, "converter": src.origin}


def llama_cpp_pairs(adapter: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The adapter's config and its A/B pairs with each B rescaled for llama.cpp's alpha / rank; refuses the rest."""
    cfg_path, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise GGUFError(f"{adapter}: not a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    for flag, why in (("use_rslora", "rsLoRA scales by alpha/√r"), ("use_dora", "DoRA rescales weight columns")):
        if config.get(flag):
            raise GGUFError(f"{cfg_path}: {flag} is set; llama.cpp's LoRA cannot apply it ({why})")
    state = load_file(str(weights))
    alpha = float(config["lora_alpha"])
    pairs = {}
    for name, t in state.items():
        m = _PAIR.match(name)
        if m is None:
            raise GGUFError(f"{name}: llama.cpp's LoRA GGUF holds A/B pairs only; this tensor is {_what(name)}")
        module, part = m.groups()
        if part in ("lora_B.weight", "lora_embedding_B"):
            rank = state[f"{module}.{'lora_A.weight' if part == 'lora_B.weight' else 'lora_embedding_A'}"].shape[0]
            peft = _pattern(config.get("alpha_pattern"), module, alpha) / _pattern(config.get("rank_pattern"), module,
                                                                                 config["r"])
            t = t.float() * (peft * rank / alpha)  # llama.cpp multiplies by alpha / rank
        pairs[name] = t.float().contiguous()
    return config, pairs


def _what(name: str) -> str:
    if name.endswith(".bias"):
        return "a bias (lora_bias, e.g. a baked steering vector: export it with surgeon export control-vector)"
    if "modules_to_save" in name:
        return "a whole module (modules_to_save, e.g. a changed norm: export the model with surgeon export gguf)"
    return "not a LoRA A/B pair"


def _relative(path, start) -> str:
    rel = os.path.relpath(path, start)
    return rel if rel.startswith(("../", "/")) else "./" + rel


def _pattern(pattern: dict | None, module: str, default):
    """peft's per-module rank/alpha: the pattern key matching the module name's tail, else the default."""
    for key, value in (pattern or {}).items():
        if module == key or module.endswith("." + key) or re.match(rf"(.*\.)?{key}$", module):
            return value
    return default
