"""Steering directions as llama.cpp control vectors (GGUF, the format repeng writes).

The file (read by llama.cpp's ``common_control_vector_load_one`` in common/common.cpp): architecture
``controlvector``, keys ``controlvector.model_hint`` and ``controlvector.layer_count``, and one F32
1-D tensor ``direction.N`` of n_embd values per steered layer N ≥ 1. llama.cpp multiplies each file
by the strength given at load (``--control-vector-scaled FILE S``; ``--control-vector FILE``: 1)
and sums files; we store α × the steering vector, so strength 1 is surgeon's ``steer(..., alpha=α)``.

Where llama.cpp adds it (``llm_graph_context::build_cvec`` → ``llama_adapter_cvec::apply_to``,
called in each family's graph in src/models/*.cpp): at the very end of decoder layer ``il``, after
the MLP's residual add — ``cur = ggml_add(cur, ffn_inp); cur = build_cvec(cur, il)`` in llama.cpp,
after the ``ffn_post_norm`` output is added in gemma3.cpp. That is the layer's output, surgeon's
hook ``layers.il`` (the residual after decoder layer il, where :func:`surgeon.edits.extract` reads
and ``steer(site="residual")`` adds). So ``direction.N`` is surgeon's layer N, same index, for
every position of the prompt and of the generation. llama.cpp never steers layer 0
(``llama_adapter_cvec`` keeps no tensor for it and the loader rejects ``direction.0``): refused here.
"""

from __future__ import annotations

import ctypes
import os

import gguf
import numpy as np
import torch

from surgeon.edits.steering import SteeringVector
from surgeon.errors import SurgeonError
from surgeon.io.atomic import atomic_file, check_output

ARCH = "controlvector"


class ControlVectorError(SurgeonError):
    """A steering vector llama.cpp cannot apply (layer 0, wrong width) or a malformed control-vector file."""


def export_control_vector(vector, out: str | os.PathLike, *, layer: int | None = None, alpha: float = 1.0,
                          model_hint: str | None = None, overwrite: bool = False) -> dict:
    """Write ``alpha`` × the vector at ``layer`` as a llama.cpp control vector; returns what was written.

    ``vector``: a :class:`surgeon.edits.SteeringVector` (its ``vector`` = direction × scale, CAA's
    units, at its own layer unless ``layer`` is given) or a raw (hidden,) tensor with ``layer``.
    """
    if isinstance(vector, SteeringVector):
        values, layer = vector.vector, vector.layer if layer is None else layer
        model_hint = model_hint or (vector.model or {}).get("model_type")
        num_layers = (vector.model or {}).get("num_layers")
    else:
        values, num_layers = torch.as_tensor(vector), None
    if layer is None:
        raise ControlVectorError("a raw direction needs layer=N (the residual after decoder layer N)")
    if layer < 1 or (num_layers is not None and layer >= num_layers):
        raise ControlVectorError(
            f"layer {layer}: llama.cpp applies control vectors to layers 1..n_layer-1 only "
            f"(it keeps no vector for layer 0); extract the direction at another layer")
    data = (alpha * values.detach().float().reshape(-1)).numpy().astype(np.float32)
    if data.ndim != 1 or not np.isfinite(data).all():
        raise ControlVectorError(f"control vector for layer {layer} must be a finite 1-D vector")
    out = check_output(out, overwrite=overwrite)
    with atomic_file(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), ARCH)
        w.add_string(f"{ARCH}.model_hint", model_hint or "unknown")
        w.add_uint32(f"{ARCH}.layer_count", 1)
        w.add_tensor(f"direction.{layer}", data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"out": str(out), "layer": layer, "alpha": alpha, "norm": float(np.linalg.norm(data)),
            "n_embd": int(data.size), "model_hint": model_hint or "unknown"}


def read_control_vector(path: str | os.PathLike, strength: float = 1.0) -> tuple[int, np.ndarray]:
    """(n_embd, data) exactly as llama.cpp's common loader builds them: layer N at data[(N-1)*n_embd:]."""
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises plain ValueErrors for bad files
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ControlVectorError(f"{path}: not a GGUF file ({why})") from None
    n_embd, data = -1, np.zeros(0, np.float32)
    for t in reader.tensors:
        head, _, idx = t.name.partition(".")
        if head != "direction" or not idx.isdigit() or int(idx) == 0:
            raise ControlVectorError(f"{path}: tensor {t.name!r}: llama.cpp wants direction.N with N >= 1")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
            raise ControlVectorError(f"{path}: tensor {t.name}: llama.cpp wants a 1-D F32 tensor")
        vec = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if n_embd == -1:
            n_embd = vec.size
        elif vec.size != n_embd:
            raise ControlVectorError(f"{path}: tensor {t.name} has {vec.size} values, the others {n_embd}")
        layer = int(idx)
        if data.size < n_embd * layer:
            data = np.concatenate([data, np.zeros(n_embd * layer - data.size, np.float32)])
        data[n_embd * (layer - 1): n_embd * layer] += vec * strength
    if n_embd == -1:
        raise ControlVectorError(f"{path}: no direction tensors")
    return n_embd, data


def apply_control_vector(llm, path: str | os.PathLike | None, strength: float = 1.0,
                         layer_start: int = 1, layer_end: int | None = None) -> None:
    """Steer a llama-cpp-python model with a control-vector file (None clears it).

    llama-cpp-python exposes only ``llama_set_adapter_cvec``; this reads the file as llama.cpp's
    ``--control-vector-scaled`` does and hands it over, for layers ``layer_start..layer_end``
    (defaults 1..n_layer, as llama.cpp's CLI).
    """
    import llama_cpp  # built per machine by make install (surgeon.export.llama_cpp.open_llama made llm)

    ctx = llm._ctx.ctx
    if path is None:
        llama_cpp.llama_set_adapter_cvec(ctx, None, 0, llm.n_embd(), 0, 0)
        llm.reset()
        return
    n_embd, data = read_control_vector(path, strength)
    if n_embd != llm.n_embd():
        raise ControlVectorError(f"{path}: vectors have {n_embd} values but the model's n_embd is {llm.n_embd()}")
    n_layer = llama_cpp.llama_model_n_layer(llm._model.model)
    buf = (ctypes.c_float * data.size).from_buffer_copy(data.tobytes())
    rc = llama_cpp.llama_set_adapter_cvec(ctx, buf, data.size, n_embd, layer_start, layer_end or n_layer)
    if rc != 0:
        raise ControlVectorError(f"{path}: llama.cpp refused the control vector (code {rc})")
    llm.reset()  # cached keys/values were computed without it
