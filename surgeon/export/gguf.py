"""Checkpoint → GGUF with llama.cpp's own converter, refused first where llama.cpp has no slot, then verified.

:func:`export_gguf` runs ``convert_hf_to_gguf.py`` (found as :mod:`surgeon.export.llama_cpp` says) on
the checkpoint and checks the file in llama.cpp against transformers (:mod:`surgeon.export.verify`).

Before converting it refuses what would convert but not load: the converter writes every tensor it
can name, but llama.cpp's loader for the file's architecture (``load_arch_tensors`` in
src/models/<arch>.cpp) creates only the bias tensors that architecture has, and fails on any other
("wrong number of tensors"). Which biases each architecture has is read from that source, in the
same llama.cpp tree as the converter: Llama has ``attn_output`` and ``ffn_{gate,up,down}`` biases
(a baked steering bias on ``mlp.down`` exports), Gemma-3 has only q/k/v (a bias on ``attn.o`` is
refused, naming the tensor).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from surgeon.export.llama_cpp import GGUFError, LlamaCppSource, find_llama_cpp
from surgeon.export.verify import DEFAULT_PROMPTS, Verification, verify
from surgeon.io.atomic import atomic_file, check_output
from surgeon.io.checkpoint import Checkpoint, open_checkpoint
from surgeon.study.task import Task

TYPES = ("f16", "bf16", "q8_0")
# surgeon role -> llama.cpp tensor type (LLM_TENSOR_*) whose "bias" slot would hold that role's bias
_BIAS_SLOT = {"attn.q": "ATTN_Q", "attn.k": "ATTN_K", "attn.v": "ATTN_V", "attn.o": "ATTN_OUT",
              "attn.qkv": "ATTN_QKV", "mlp.gate": "FFN_GATE", "mlp.up": "FFN_UP", "mlp.down": "FFN_DOWN",
              "mlp.gate_up": "FFN_UP"}


# --------------------------------------------------------------------------- what llama.cpp can hold


def gguf_architecture(src: LlamaCppSource, hf_architecture: str) -> str | None:
    """The GGUF architecture (MODEL_ARCH name, e.g. ``LLAMA``) the converter writes for ``hf_architecture``.

    Read from the converter's source (``@ModelBase.register("LlamaForCausalLM", ...)`` then the
    class's ``model_arch``), following base classes; None where the source does not say.
    """
    texts = [p.read_text(encoding="utf-8") for p in [src.converter, *sorted((src.root / "conversion").glob("*.py"))]
             if p.is_file()]
    blob = "\n".join(texts)
    registered = None
    for m in re.finditer(r"@ModelBase\.register\(([^)]*)\)", blob):
        if re.search(rf"""["']{re.escape(hf_architecture)}["']""", m.group(1)):
            registered = re.search(r"\nclass (\w+)\(", blob[m.end():])
            break
    if registered is None:
        return "" if re.search(r"@ModelBase\.register", blob) else None  # "": the converter does not know it
    name = registered.group(1)
    for _ in range(8):  # follow inheritance until a class sets model_arch
        cls = re.search(rf"\nclass {name}\(([\w., ]*)\):(.*?)(?=\n(?:class |@))", blob, re.S)
        if cls is None:
            return None
        arch = re.search(r"^\s+model_arch\s*=\s*gguf\.MODEL_ARCH\.(\w+)", cls.group(2), re.M)
        if arch:
            return arch.group(1)
        name = cls.group(1).split(",")[0].strip()
    return None


def bias_slots(src: LlamaCppSource, arch: str) -> set[str] | None:
    """LLM_TENSOR_* types whose bias llama.cpp loads for ``arch`` (from its loader in src/models/); None if unknown."""
    model_cpp = src.root / "src" / "llama-model.cpp"
    if not model_cpp.is_file():
        return None
    mapping = model_cpp.read_text(encoding="utf-8", errors="replace")
    cls = None
    for m in re.finditer(r"((?:case\s+LLM_ARCH_\w+\s*:\s*)+)return new (\w+)\(", mapping):
        if re.search(rf"\bLLM_ARCH_{arch}\s*:", m.group(1)):
            cls = m.group(2)
            break
    if cls is None:
        return None
    for cpp in sorted((src.root / "src" / "models").glob("*.cpp")):
        text = cpp.read_text(encoding="utf-8", errors="replace")
        start = text.find(f"void {cls}::load_arch_tensors(")
        if start < 0:
            continue
        end = text.find("\n}", start)
        body = text[start:end]
        slots = set(re.findall(r'tn\(\s*LLM_TENSOR_(\w+)\s*,\s*"bias"', body))
        if "create_tensor_qkv(" in body:  # llama_model_base::create_tensor_qkv loads optional q/k/v (or qkv) biases
            slots |= {"ATTN_Q", "ATTN_K", "ATTN_V", "ATTN_QKV"}
        return slots
    return None


def check_representable(ck, src: LlamaCppSource) -> str | None:
    """Refuse, before converting, a checkpoint llama.cpp cannot load as it is; return the GGUF architecture.

    Checks that the converter knows the family and that every bias on a projection has a slot in
    llama.cpp's loader for that architecture (Gemma-3 has none on ``attn.o``: a baked steering
    bias there would convert, then fail to load). The error names the first non-zero such bias.
    """
    archs = ck.config.get("architectures") or []
    hf_arch = archs[0] if archs else None
    if hf_arch is None:
        raise GGUFError(f"{ck.path / 'config.json'}: no 'architectures' entry; llama.cpp's converter needs one")
    arch = gguf_architecture(src, hf_arch)
    if arch == "":
        raise GGUFError(f"{ck.path / 'config.json'}: llama.cpp's converter ({src.origin}) does not support {hf_arch}")
    if not arch or ck.architecture is None:
        return arch or None
    slots = bias_slots(src, arch)
    if slots is None:
        return arch
    missing = []
    for ref in ck.roles.by_key.values():
        role = ref.fused_in or ref.role
        if ref.param == "bias" and role in _BIAS_SLOT and _BIAS_SLOT[role] not in slots:
            missing.append(ref)
    if missing:
        nonzero = [r for r in missing if bool(ck.get(r.key).abs().max() > 0)]
        ref = (nonzero or missing)[0]
        more = f" (and {len(missing) - 1} more bias tensors like it)" if len(missing) > 1 else ""
        raise GGUFError(
            f"{ref.key} ({ref.tensor}): llama.cpp's {arch.lower()} architecture has no slot for a bias on "
            f"{ref.role}{more}, so the GGUF would not load; ship a steering vector as a control vector instead "
            f"(surgeon export control-vector)")
    return arch



def convert(checkpoint: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f16",
            src: LlamaCppSource | None = None, overwrite: bool = False) -> float:
    """Run llama.cpp's converter on a saved checkpoint directory; the file appears atomically. Returns seconds."""
    if outtype not in TYPES:
        raise GGUFError(f"--type {outtype!r}: choose one of {', '.join(TYPES)}")
    src = src or find_llama_cpp()
    out = check_output(out, (checkpoint,), overwrite=overwrite)
    t = time.perf_counter()
    with atomic_file(out) as tmp:
        src.run(src.converter, str(checkpoint), "--outfile", str(tmp), "--outtype", outtype, what=str(checkpoint))
    return time.perf_counter() - t


# --------------------------------------------------------------------------- the one call


@dataclass
class GGUFExport:
    out: str
    outtype: str
    architecture: str | None
    converter: str
    convert_seconds: float
    verification: Verification | None
    seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verification"] = self.verification.to_dict() if self.verification else None
        return d


def export_gguf(checkpoint, out: str | os.PathLike, *, outtype: str = "f16", converter=None, verify_with=True,
                prompts=None, task=None, max_new_tokens: int = 12, overwrite: bool = False) -> GGUFExport:
    """Checkpoint → GGUF with llama.cpp's converter, then verified in llama.cpp against transformers.

    ``checkpoint``: a directory or an open Checkpoint (staged edits are materialised first).
    ``verify_with``: True verifies in llama-cpp-python (not installed: an error); False skips it.
    ``prompts``, a ``task`` file's probes and the prompts an edit recorded (a ROME fact's) are
    verified besides the defaults. On a failed verification the file stays, for inspection, and
    the error names the prompt.
    """
    t0 = time.perf_counter()
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
    if outtype not in TYPES:
        raise GGUFError(f"--type {outtype!r}: choose one of {', '.join(TYPES)}")
    out = check_output(out, (ck.path,), overwrite=overwrite)
    src = find_llama_cpp(converter)
    arch = check_representable(ck, src)
    all_prompts = list(DEFAULT_PROMPTS) + list(prompts or []) + _task_prompts(task) + _edit_prompts(ck)
    all_prompts = list(dict.fromkeys(all_prompts))
    with ck.materialized() as path:
        seconds = convert(path, out, outtype=outtype, src=src, overwrite=overwrite)
        ver = None
        if verify_with:
            ver = verify(out, path, outtype=outtype, prompts=all_prompts, max_new_tokens=max_new_tokens)
    return GGUFExport(str(out), outtype, arch, src.origin, seconds, ver, time.perf_counter() - t0)


EDIT_PROMPTS = 8  # a many-facts edit's prompts verified (each costs two short generations)


def _task_prompts(task) -> list[str]:
    if task is None:
        return []
    t = task if isinstance(task, Task) else Task.load(task)
    return [p.prompt for group in (t.efficacy, t.generalisation, t.specificity) for p in group]


def _edit_prompts(ck) -> list[str]:
    """Prompts an edit recorded in surgeon.json (a ROME fact's prompt, the first :data:`EDIT_PROMPTS` of a
    MEMIT batch): verified too, so the edit itself is checked."""
    edits = list(ck.edits)
    manifest = Path(ck.path) / "surgeon.json"
    try:
        edits += json.loads(manifest.read_text(encoding="utf-8")).get("edits", []) if manifest.is_file() else []
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    out = []
    for e in edits:
        if not isinstance(e, dict):
            continue
        if isinstance(e.get("prompt"), str):
            out.append(e["prompt"])
        facts = e.get("facts") if isinstance(e.get("facts"), list) else []  # MEMIT / AlphaEdit: the first few
        out += [f["prompt"] for f in facts[:EDIT_PROMPTS] if isinstance(f, dict) and isinstance(f.get("prompt"), str)]
    return out
