"""Where a :class:`surgeon.runtime.Runtime`'s model lives: its device, its placement, its decoder depth.

One device (``default_device``: ``$SURGEON_DEVICE`` / ``surgeon --device``, else the GPU when
there is one, else the CPU), or across GPUs, CPU memory and disk with accelerate
(``device_map``, ``max_memory``, ``offload_folder``; docs/scale.md). ``layers=n`` builds only the
first n decoder layers from the same files. Only :mod:`surgeon.runtime` calls these.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from surgeon.errors import UnknownArchitecture

if TYPE_CHECKING:  # torch loads when a model is built, not when the CLI parses --max-memory
    import torch


def env_placement() -> dict:
    """The placement ``surgeon --max-memory / --offload-folder / --dtype`` set for every model a command
    builds (also in compare's arm children): ``$SURGEON_MAX_MEMORY`` ("0=70GiB,cpu=100GiB"),
    ``$SURGEON_OFFLOAD_FOLDER``, ``$SURGEON_DTYPE``."""
    out: dict = {}
    if spec := os.environ.get("SURGEON_MAX_MEMORY"):
        out["max_memory"] = parse_max_memory(spec)
    if folder := os.environ.get("SURGEON_OFFLOAD_FOLDER"):
        out["offload_folder"] = folder
    if dtype := os.environ.get("SURGEON_DTYPE"):
        out["dtype"] = dtype
    return out


def parse_max_memory(spec: str) -> dict:
    """``"0=70GiB,cpu=100GiB"`` -> ``{0: "70GiB", "cpu": "100GiB"}`` (accelerate's ``max_memory``)."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        where, eq, amount = part.partition("=")
        where, amount = where.strip(), amount.strip()
        if not eq or not amount or not (where.isdigit() or where in ("cpu", "mps")):
            raise ValueError(f"max memory {spec!r}: expected DEVICE=AMOUNT pairs such as 0=70GiB,cpu=100GiB "
                             f"(DEVICE: a GPU index, cpu or mps), not {part!r}")
        out[int(where) if where.isdigit() else where] = amount
    if not out:
        raise ValueError(f"max memory {spec!r}: name at least one DEVICE=AMOUNT")
    return out


def default_device() -> str:
    """``$SURGEON_DEVICE`` if set (``surgeon --device``), else ``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    return os.environ.get("SURGEON_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def load_model(d, dtype, layers: int | None, device_map, max_memory, offload_folder):
    """``from_pretrained`` of directory ``d``, with placement and (``layers``) a shortened decoder stack.

    A shortened model gets the same config with ``num_hidden_layers`` (and a
    per-layer ``layer_types`` list) cut; transformers then has no slot for the
    upper layers' tensors and never reads them from the safetensors files.
    """
    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    kw = {"dtype": dtype}
    if device_map is not None:
        kw.update(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    config = AutoConfig.from_pretrained(d)
    auto = auto_class(config, d)
    if layers is None:
        return auto.from_pretrained(d, **kw)
    text = config.get_text_config()
    text.num_hidden_layers = layers
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[:layers]
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "weights not used" lists every upper-layer tensor: that is the point
    try:
        return auto.from_pretrained(d, config=config, **kw)
    finally:
        hf_logging.set_verbosity(level)


def auto_class(config, d):
    """AutoModelForCausalLM, else AutoModelForImageTextToText (a multimodal wrapper such as Llava, run on text)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto import modeling_auto as auto

    if config.model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    if config.model_type in auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    raise UnknownArchitecture(f"{d}: transformers has no causal-LM or image-text-to-text class for model_type "
                              f"{config.model_type!r}, so it cannot be run (inspect, edits and save work)")


def input_device(model) -> torch.device:
    """Where inputs go: the embedding's execution device (its accelerate hook's when it is placed)."""
    import torch

    emb = model.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is None:
        dev = emb.weight.device
    return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
