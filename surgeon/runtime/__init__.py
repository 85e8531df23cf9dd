"""The runtime: the one forward-pass owner: a transformers model built from a Checkpoint, hooked by role names.

Everything that needs activations (ROME keys and covariance, steering
directions, fine-tuning, measurement, causal tracing) goes through
:class:`Runtime`; nothing else builds models or registers hooks its own way.

Hook points use the role vocabulary (the TransformerLens idea of one name for
weights, hooks and docs):

* ``layers.5``            residual stream after layer 5 (decoder layer output)
* ``layers.5.input``      residual stream entering layer 5
* ``layers.5.attn``       attention block output, before the residual add
* ``layers.5.mlp``        MLP block output, before the residual add
* ``layers.5.mlp.down``   output of that projection; ``layers.5.mlp.down.input`` its input
* ``embed``, ``lm_head``, ``final_norm`` (``.input`` works for each)

The model is loaded from :meth:`Checkpoint.materialized`, so staged edits
are seen exactly as :func:`surgeon.io.save.save` would write them.

Placement (docs/scale.md): one device (``device``, default the GPU when there
is one, else the CPU; ``$SURGEON_DEVICE`` / ``surgeon --device`` override), or
across GPUs, CPU memory and disk with accelerate (``device_map``, ``max_memory``,
``offload_folder``: layers that do not fit are read back from the checkpoint's
own safetensors files at each forward). ``layers=n`` builds only the first n
decoder layers from the same files (covariance or steering at layer n - 1 never
runs, nor loads, the layers above). Hooks follow the activation's device.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOME = {"Runtime": "bridge", "bos_id": "bridge", "load": "bridge", "default_device": "placement",
         "Resume": "resume", "left_pad": "resume", "positions": "resume"}
__all__ = ["Resume", "Runtime", "bos_id", "default_device", "left_pad", "load", "positions"]

if TYPE_CHECKING:
    from surgeon.runtime.bridge import Runtime, bos_id, load
    from surgeon.runtime.placement import default_device
    from surgeon.runtime.resume import Resume, left_pad, positions


def __getattr__(name: str):
    """Import on first use (PEP 562): ``surgeon.runtime.placement`` is read by the CLI before torch may load
    (its OpenMP wait policy must be set first), so the package itself imports nothing heavy."""
    if name in _HOME:
        return getattr(importlib.import_module(f"surgeon.runtime.{_HOME[name]}"), name)
    raise AttributeError(f"module 'surgeon.runtime' has no attribute {name!r}")
